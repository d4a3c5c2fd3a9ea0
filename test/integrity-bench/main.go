// Command integrity-bench measures parry's integrity scanner side by side
// with AIDE on a generated tree, the watcher's detection latency, and the
// watcher's memory with many files. Everything it creates lives under a
// temporary directory in /tmp and is removed afterwards (unless -keep).
//
//	go run ./test/integrity-bench                 # speed: parry vs aide, sha256sum, openssl
//	go run ./test/integrity-bench -mode latency   # 1,000 changes: median/p99 detection latency
//	go run ./test/integrity-bench -mode memory    # RSS with 100,000 watched files
//	go run ./test/integrity-bench -mode flood     # RSS, reports and open findings after 200,000 new files
//	go run ./test/integrity-bench -files 5000 -big 6   # a smaller tree
//
// Root is not required. aide, sha256sum, openssl, find and xargs must be
// installed for the speed comparison (-no-aide skips AIDE).
package main

import (
	"context"
	"flag"
	"fmt"
	"github.com/parryhq/parry/agent/api"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/parryhq/parry/integrity"
)

func main() {
	mode := flag.String("mode", "speed", "speed | fast | latency | memory | flood")
	files := flag.Int("files", 50000, "speed: number of files in the tree")
	big := flag.Int("big", 60, "speed: how many of them are 1-16 MiB (the rest 1-64 KiB)")
	runs := flag.Int("runs", 3, "speed: runs of each parry measurement (median reported); fast: runs of the fast check (at least 11)")
	noAIDE := flag.Bool("no-aide", false, "speed: skip AIDE")
	changes := flag.Int("changes", 1000, "latency: number of changes")
	watched := flag.Int("watched", 100000, "memory: number of watched files")
	floodN := flag.Int("flood", 200000, "flood: number of files created")
	noAggregate := flag.Bool("no-aggregate", false, "flood: turn burst aggregation and the open bound off (the figures before them)")
	keep := flag.Bool("keep", false, "keep the generated tree")
	hash := flag.String("hash", "sha256", "speed: parry's content hash, sha256 or blake3")
	flag.Parse()

	var err error
	switch *mode {
	case "speed":
		err = speed(*files, *big, *runs, *hash, !*noAIDE, *keep)
	case "fast":
		err = fastCheck(*files, *big, max(*runs, 11), !*noAIDE, *keep)
	case "latency":
		err = latency(*changes, *keep)
	case "memory":
		err = memory(*watched, *keep)
	case "flood":
		err = flood(*floodN, *noAggregate, *keep)
	case "memory-child":
		err = memoryChild(flag.Arg(0), flag.Arg(1))
	default:
		err = fmt.Errorf("unknown -mode %q", *mode)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "integrity-bench:", err)
		os.Exit(1)
	}
}

// workdir makes a fresh directory under /tmp and a cleanup for it.
func workdir(keep bool) (string, func(), error) {
	dir, err := os.MkdirTemp("/tmp", "parry-integrity-bench-")
	if err != nil {
		return "", nil, err
	}
	return dir, func() {
		if keep {
			fmt.Println("kept", dir)
			return
		}
		os.RemoveAll(dir)
	}, nil
}

// generate writes n files (big of them 1-16 MiB, the rest 1-64 KiB) in
// directories of 250, and returns the total size.
func generate(root string, n, big int) (int64, error) {
	rng := rand.New(rand.NewPCG(1, 2))
	src := make([]byte, 16<<20+4096)
	for i := range src {
		src[i] = byte(rng.Uint32())
	}
	bigAt := map[int]bool{}
	for len(bigAt) < big && len(bigAt) < n {
		bigAt[rng.IntN(n)] = true
	}
	var total int64
	for i := range n {
		dir := filepath.Join(root, fmt.Sprintf("d%03d", i/2500), fmt.Sprintf("s%02d", i/250%10))
		if i%250 == 0 {
			if err := os.MkdirAll(dir, 0o755); err != nil {
				return 0, err
			}
		}
		size := 1<<10 + rng.IntN(63<<10)
		if bigAt[i] {
			size = 1<<20 + rng.IntN(15<<20)
		}
		off := rng.IntN(4096)
		if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("f%05d.dat", i)), src[off:off+size], 0o644); err != nil {
			return 0, err
		}
		total += int64(size)
	}
	return total, nil
}

// measured is a wall-clock time and the CPU time (user+system, of this
// process and of waited-for children) spent meanwhile.
type measured struct{ wall, cpu time.Duration }

func cpuNow() time.Duration {
	var self, kids syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &self)
	_ = syscall.Getrusage(syscall.RUSAGE_CHILDREN, &kids)
	tv := func(t syscall.Timeval) time.Duration { return time.Duration(t.Nano()) }
	return tv(self.Utime) + tv(self.Stime) + tv(kids.Utime) + tv(kids.Stime)
}

func timeIt(f func() error) (measured, error) {
	start, c0 := time.Now(), cpuNow()
	err := f()
	return measured{time.Since(start), cpuNow() - c0}, err
}

func median(ds []measured) measured {
	s := slices.Clone(ds)
	slices.SortFunc(s, func(a, b measured) int { return int(a.wall - b.wall) })
	return s[len(s)/2]
}

func run(name string, args ...string) error {
	cmd := exec.Command(name, args...)
	cmd.Stdout, cmd.Stderr = nil, nil
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, lastLines(string(out), 5))
	}
	return nil
}

func loadavg() string {
	b, _ := os.ReadFile("/proc/loadavg")
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

func lastLines(s string, n int) string {
	ls := strings.Split(strings.TrimSpace(s), "\n")
	return strings.Join(ls[max(0, len(ls)-n):], "\n")
}

func monitorFor(tree, state string) (*integrity.Monitor, error) {
	return monitorWith(tree, state, integrity.HashSHA256)
}

func monitorWith(tree, state, hash string) (*integrity.Monitor, error) {
	iv := api.Duration(0)
	cfg := integrity.Config{Paths: []integrity.PathSpec{{Path: tree}}, Rules: []integrity.Rule{}, ScanInterval: &iv, Hash: hash}
	return integrity.NewMonitor(cfg, integrity.Options{StateDir: state})
}

func speed(n, big, runs int, hash string, withAIDE, keep bool) error {
	dir, cleanup, err := workdir(keep)
	if err != nil {
		return err
	}
	defer cleanup()
	tree, state := filepath.Join(dir, "tree"), filepath.Join(dir, "state")
	fmt.Printf("generating %d files (%d of 1-16 MiB) under %s ...\n", n, big, tree)
	total, err := generate(tree, n, big)
	if err != nil {
		return err
	}
	fmt.Printf("tree: %d files, %.2f GiB; %d CPUs; %s\n", n, float64(total)/(1<<30), runtime.NumCPU(), runtime.Version())
	// Warm the page cache.
	if err := run("sh", "-c", "find "+tree+" -type f -print0 | xargs -0 cat > /dev/null"); err != nil {
		return err
	}
	type row struct {
		name string
		took measured
	}
	var rows []row
	m, err := monitorWith(tree, state, hash)
	if err != nil {
		return err
	}
	ctx := context.Background()
	var bs, cs []measured
	for range runs {
		d, err := timeIt(func() error { _, err := m.Baseline(ctx); return err })
		if err != nil {
			return err
		}
		bs = append(bs, d)
		d, err = timeIt(func() error {
			fs, err := m.Check(ctx)
			if err == nil && len(fs) != 0 {
				err = fmt.Errorf("check of an unchanged tree found %d changes", len(fs))
			}
			return err
		})
		if err != nil {
			return err
		}
		cs = append(cs, d)
	}
	rows = append(rows, row{fmt.Sprintf("parry baseline, %s (median of %d)", hash, runs), median(bs)},
		row{fmt.Sprintf("parry check, %s (median of %d)", hash, runs), median(cs)})
	if withAIDE {
		for _, workers := range []string{"1", "2"} {
			conf := filepath.Join(dir, "aide.conf")
			db := filepath.Join(dir, "aide.db")
			cfg := fmt.Sprintf("database_in=file:%s\ndatabase_out=file:%s.new\ngzip_dbout=no\nreport_url=stdout\nnum_workers=%s\nSha = p+i+n+u+g+s+m+c+sha256\n%s Sha\n",
				db, db, workers, tree)
			if err := os.WriteFile(conf, []byte(cfg), 0o600); err != nil {
				return err
			}
			d, err := timeIt(func() error { return run("aide", "--init", "-c", conf) })
			if err != nil {
				return err
			}
			rows = append(rows, row{"aide --init, sha256 only, num_workers=" + workers, d})
			if err := os.Rename(db+".new", db); err != nil {
				return err
			}
			d, err = timeIt(func() error { return run("aide", "--check", "-c", conf) })
			if err != nil {
				return err
			}
			rows = append(rows, row{"aide --check, sha256 only, num_workers=" + workers, d})
		}
	}
	for _, tool := range []string{"sha256sum", "openssl dgst -sha256"} {
		d, err := timeIt(func() error {
			return run("sh", "-c", fmt.Sprintf("find %s -type f -print0 | xargs -0 -P%d -n 500 %s > /dev/null", tree, runtime.NumCPU(), tool))
		})
		if err != nil {
			return err
		}
		rows = append(rows, row{fmt.Sprintf("%s on %d cores (xargs -P%d)", tool, runtime.NumCPU(), runtime.NumCPU()), d})
	}
	fmt.Printf("\n%-48s %10s %10s\n", "measurement (warm page cache)", "wall s", "cpu s")
	for _, r := range rows {
		fmt.Printf("%-48s %10.2f %10.2f\n", r.name, r.took.wall.Seconds(), r.took.cpu.Seconds())
	}
	fmt.Printf("(load average at the end: %s)\n", loadavg())
	return nil
}
