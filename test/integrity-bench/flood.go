package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strings"
	"sync"
	"time"

	"github.com/parryhq/parry/agent/api"
	"github.com/parryhq/parry/integrity"
	"golang.org/x/sys/unix"
)

// flood measures what a flood of new files in a watched tree costs (issue
// 10 item 6): n empty files created as fast as possible in one watched
// directory, then the watcher's RSS, its reports (each one an audit line
// and a signal in parryd; their JSON size stands for the audit log's
// growth) and its open findings once every file is accounted for.
// -no-aggregate turns the burst aggregation and the open bound off, for
// the figures before them.
func flood(n int, noAggregate, keep bool) error {
	dir, cleanup, err := workdir(keep)
	if err != nil {
		return err
	}
	defer cleanup()
	tree := filepath.Join(dir, "tree")
	target := filepath.Join(tree, "flood")
	if err := generateSmall(tree, 10000); err != nil { // something to watch besides
		return err
	}
	if err := os.MkdirAll(target, 0o755); err != nil {
		return err
	}
	iv := api.Duration(0)
	cfg := integrity.Config{Paths: []integrity.PathSpec{{Path: tree}}, Rules: []integrity.Rule{}, ScanInterval: &iv, PackageManager: "none"}
	if noAggregate {
		cfg.BurstThreshold, cfg.MaxOpenFindings = 100000, 1000000
	}
	var mu sync.Mutex
	var reports, auditBytes, individual, folded int
	report := func(f integrity.Finding) {
		line, _ := json.Marshal(f)
		mu.Lock()
		defer mu.Unlock()
		reports++
		auditBytes += len(line) + 1
		switch {
		case f.Kind == integrity.KindAdded && strings.HasPrefix(f.Path, target+"/"):
			individual++
		case f.Kind == integrity.KindBurst:
			folded += f.Count
		}
	}
	m, err := integrity.NewMonitor(cfg, integrity.Options{StateDir: filepath.Join(dir, "state"), Report: report})
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
	runtime.GC()
	debug.FreeOSMemory()
	before := procStatus("VmRSS")
	start := time.Now()
	for i := range n {
		fd, err := unix.Open(filepath.Join(target, fmt.Sprintf("f%07d", i)), unix.O_CREAT|unix.O_WRONLY|unix.O_CLOEXEC, 0o644)
		if err != nil {
			return err
		}
		unix.Close(fd)
	}
	created := time.Since(start)
	deadline := time.Now().Add(5 * time.Minute)
	for {
		mu.Lock()
		got := individual + folded
		mu.Unlock()
		if got >= n {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("only %d of %d files accounted for after 5 minutes", got, n)
		}
		time.Sleep(50 * time.Millisecond)
	}
	settled := time.Since(start)
	peak := procStatus("VmHWM")
	st, err := m.Status(ctx)
	if err != nil {
		return err
	}
	runtime.GC()
	debug.FreeOSMemory()
	after := procStatus("VmRSS")
	mu.Lock()
	fmt.Printf("flood of %d new files in one watched directory (aggregation %s), created in %s, all accounted for after %s:\n",
		n, map[bool]string{true: "off", false: "on"}[noAggregate], created.Round(time.Millisecond), settled.Round(time.Millisecond))
	fmt.Printf("  RSS %s before, %s after (peak %s)\n", before, after, peak)
	fmt.Printf("  %d reports (audit lines), %.1f MiB of JSON; %d files reported one by one, %d aggregated\n",
		reports, float64(auditBytes)/(1<<20), individual, folded)
	fmt.Printf("  open findings %d (max %d, %d not kept), status aggregated %d\n", len(st.Open), st.MaxOpenFindings, st.OpenDropped, st.Aggregated)
	mu.Unlock()
	cancel()
	return <-done
}
