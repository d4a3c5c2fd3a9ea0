package main

import (
	"bufio"
	"context"
	"fmt"
	"github.com/parryhq/parry/agent/api"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/parryhq/parry/integrity"
)

// latency changes files one every 5 ms while the watcher runs and measures
// from each write to its finding. A change without a finding within 5 s
// counts as missed.
func latency(n int, keep bool) error {
	dir, cleanup, err := workdir(keep)
	if err != nil {
		return err
	}
	defer cleanup()
	tree := filepath.Join(dir, "tree")
	if _, err := generate(tree, n, 0); err != nil {
		return err
	}
	var mu sync.Mutex
	seen := map[string]time.Time{}
	iv := api.Duration(0)
	cfg := integrity.Config{Paths: []integrity.PathSpec{{Path: tree}}, Rules: []integrity.Rule{}, ScanInterval: &iv}
	m, err := integrity.NewMonitor(cfg, integrity.Options{StateDir: filepath.Join(dir, "state"), Report: func(f integrity.Finding) {
		now := time.Now()
		mu.Lock()
		if _, ok := seen[f.Path]; !ok {
			seen[f.Path] = now
		}
		mu.Unlock()
	}})
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if _, err := m.Baseline(ctx); err != nil {
		return err
	}
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	for st, _ := m.Status(ctx); !st.Running; st, _ = m.Status(ctx) {
		time.Sleep(10 * time.Millisecond)
	}
	var paths []string
	_ = filepath.WalkDir(tree, func(p string, d os.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			paths = append(paths, p)
		}
		return nil
	})
	paths = paths[:min(n, len(paths))]
	wrote := make([]time.Time, len(paths))
	tick := time.NewTicker(5 * time.Millisecond)
	for i, p := range paths {
		<-tick.C
		wrote[i] = time.Now()
		if err := os.WriteFile(p, []byte(fmt.Sprintf("change %d", i)), 0o644); err != nil {
			return err
		}
	}
	tick.Stop()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		mu.Lock()
		all := len(seen) >= len(paths)
		mu.Unlock()
		if all {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		return err
	}
	mu.Lock()
	defer mu.Unlock()
	var ds []time.Duration
	missed := 0
	for i, p := range paths {
		at, ok := seen[p]
		if !ok {
			missed++
			continue
		}
		ds = append(ds, at.Sub(wrote[i]))
	}
	if len(ds) == 0 {
		return fmt.Errorf("no change detected")
	}
	slices.Sort(ds)
	pct := func(q float64) time.Duration { return ds[min(len(ds)-1, int(q*float64(len(ds))))] }
	fmt.Printf("detection latency over %d changes (one every 5 ms, debounce %s):\n", len(paths), integrity.DefaultDebounce)
	fmt.Printf("  median %.1f ms  p90 %.1f ms  p99 %.1f ms  max %.1f ms  missed %d\n",
		ms(pct(0.5)), ms(pct(0.9)), ms(pct(0.99)), ms(ds[len(ds)-1]), missed)
	return nil
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// memory generates a tree of n small files and measures, in a fresh child
// process, the memory of a monitor that loaded the baseline and watches it.
func memory(n int, keep bool) error {
	dir, cleanup, err := workdir(keep)
	if err != nil {
		return err
	}
	defer cleanup()
	tree, state := filepath.Join(dir, "tree"), filepath.Join(dir, "state")
	if err := generateSmall(tree, n); err != nil {
		return err
	}
	m, err := monitorFor(tree, state)
	if err != nil {
		return err
	}
	if _, err := m.Baseline(context.Background()); err != nil {
		return err
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	cmd := exec.Command(self, "-mode", "memory-child", tree, state)
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	return cmd.Run()
}

// generateSmall writes n files of 1 KiB in directories of 100.
func generateSmall(root string, n int) error {
	data := []byte(strings.Repeat("x", 1024))
	for i := range n {
		dir := filepath.Join(root, fmt.Sprintf("d%02d", i/10000), fmt.Sprintf("s%03d", i/100%100))
		if i%100 == 0 {
			if err := os.MkdirAll(dir, 0o755); err != nil {
				return err
			}
		}
		if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("f%06d", i)), data, 0o644); err != nil {
			return err
		}
	}
	return nil
}

func memoryChild(tree, state string) error {
	m, err := monitorFor(tree, state)
	if err != nil {
		return err
	}
	if _, err := m.Load(); err != nil {
		return err
	}
	afterLoad := procStatus("VmHWM")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	peak := peakGoMemory(ctx)
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	for st, _ := m.Status(ctx); !st.Running; st, _ = m.Status(ctx) {
		time.Sleep(10 * time.Millisecond)
	}
	st, err := m.Status(ctx)
	if err != nil {
		return err
	}
	runtime.GC()
	debug.FreeOSMemory()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	rss, hwm := procStatus("VmRSS"), procStatus("VmHWM")
	fmt.Printf("watching %d entries in %d directories (%d watches); start-up check took %s:\n", st.BaselineEntries, st.Watches, st.Watches, st.LastScanTook.Round(time.Millisecond))
	fmt.Printf("  RSS %s (peak %s: %s after loading the baseline, the rest during the start-up check); Go heap in use %.1f MiB\n",
		rss, hwm, afterLoad, float64(ms.HeapInuse)/(1<<20))
	objs, total := peak()
	fmt.Printf("  peak during the start-up check (runtime/metrics, sampled every 5 ms): heap objects %.1f MiB, all Go memory %.1f MiB\n",
		float64(objs)/(1<<20), float64(total)/(1<<20))
	cancel()
	return <-done
}

func procStatus(key string) string {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return "?"
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), key+":"); ok {
			return strings.TrimSpace(v)
		}
	}
	return "?"
}

// peakGoMemory samples runtime/metrics every 5 ms until ctx ends or the
// returned function is called, which gives the highest heap-object and
// total Go memory seen.
func peakGoMemory(ctx context.Context) func() (uint64, uint64) {
	samples := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}, {Name: "/memory/classes/total:bytes"}}
	var mu sync.Mutex
	var objs, total uint64
	stop := make(chan struct{})
	go func() {
		t := time.NewTicker(5 * time.Millisecond)
		defer t.Stop()
		for {
			metrics.Read(samples)
			mu.Lock()
			objs, total = max(objs, samples[0].Value.Uint64()), max(total, samples[1].Value.Uint64())
			mu.Unlock()
			select {
			case <-ctx.Done():
				return
			case <-stop:
				return
			case <-t.C:
			}
		}
	}()
	return func() (uint64, uint64) {
		close(stop)
		mu.Lock()
		defer mu.Unlock()
		return objs, total
	}
}
