// Command pkgverify-bench measures `parry integrity verify-packages` over
// this whole machine beside `debsums -s` and `dpkg --verify`, in the same
// run, and prints the median wall-clock and CPU seconds of -runs runs of
// each, with a warm page cache and (with -cold) a cold one.
//
//	go run ./test/pkgverify-bench              # warm: 3 runs of each
//	go run ./test/pkgverify-bench -cold        # also cold: package files evicted before each run
//	go run ./test/pkgverify-bench -no-debsums  # debsums takes minutes
//	go run ./test/pkgverify-bench -cold -debsums-runs 1
//
// "Cold" evicts the content of every file dpkg lists from the page cache
// (posix_fadvise DONTNEED) before each run; inodes and directories stay
// cached, and so does everything of other processes. It needs no root, but
// as non-root some files are unreadable to every tool. A tool that is not
// installed is skipped with the reason.
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/parryhq/parry/integrity/dpkg"
	"golang.org/x/sys/unix"
)

type sample struct{ wall, cpu time.Duration }

type tool struct {
	name string
	runs int
	run  func() (sample, error)
}

func main() {
	runs := flag.Int("runs", 3, "runs of each tool per cache state (median reported)")
	cold := flag.Bool("cold", false, "also measure with the package files evicted from the page cache")
	noDebsums := flag.Bool("no-debsums", false, "skip debsums")
	debsumsRuns := flag.Int("debsums-runs", 0, "runs of debsums (it takes minutes); 0: -runs")
	flag.Parse()
	if _, err := os.Stat("/var/lib/dpkg/status"); err != nil {
		fmt.Println("skipped: no dpkg database:", err)
		return
	}
	tools := []tool{{name: "parry integrity verify-packages", runs: *runs, run: parry}}
	for _, t := range []struct{ name, bin string }{{"debsums -s", "debsums"}, {"dpkg --verify", "dpkg"}} {
		if t.bin == "debsums" && *noDebsums {
			continue
		}
		if _, err := exec.LookPath(t.bin); err != nil {
			fmt.Printf("skipped %s: %v (apt-get install %s)\n", t.name, err, t.bin)
			continue
		}
		args := strings.Fields(t.name)
		n := *runs
		if t.bin == "debsums" && *debsumsRuns > 0 {
			n = *debsumsRuns
		}
		tools = append(tools, tool{name: t.name, runs: n, run: func() (sample, error) { return child(args...) }})
	}
	res, err := dpkg.Verify(context.Background(), dpkg.Options{})
	if err != nil {
		fmt.Println("verify:", err)
		os.Exit(1)
	}
	var load [3]float64
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		fmt.Sscan(string(b), &load[0], &load[1], &load[2])
	}
	fmt.Printf("machine: %d packages, %d files, %.2f GiB of package files; load average %.2f; uid %d\n",
		res.Packages, res.Files, float64(res.Bytes)/(1<<30), load[0], os.Getuid())
	states := []string{"warm"}
	if *cold {
		states = append(states, "cold")
	}
	files := packageFiles()
	fmt.Printf("%-34s %-5s %10s %10s %s\n", "tool", "cache", "wall s", "CPU s", "runs (wall s)")
	medians := map[string]time.Duration{}
	for _, state := range states {
		if state == "warm" { // every tool reads the same files: one run warms the cache for all
			if _, err := parry(); err != nil {
				fmt.Println("warm-up:", err)
			}
		}
		for _, t := range tools {
			var ss []sample
			for range t.runs {
				if state == "cold" {
					evict(files)
				}
				s, err := t.run()
				if err != nil {
					fmt.Printf("%s: %v\n", t.name, err)
					break
				}
				ss = append(ss, s)
			}
			if len(ss) == 0 {
				continue
			}
			w, c := median(ss)
			medians[state+t.name] = w
			var each []string
			for _, s := range ss {
				each = append(each, fmt.Sprintf("%.2f", s.wall.Seconds()))
			}
			fmt.Printf("%-34s %-5s %10.2f %10.2f %s\n", t.name, state, w.Seconds(), c.Seconds(), strings.Join(each, " "))
		}
	}
	for _, state := range states {
		p := medians[state+tools[0].name]
		for _, t := range tools[1:] {
			if m, ok := medians[state+t.name]; ok && p > 0 {
				fmt.Printf("%s: verify-packages is %.1fx faster than %s\n", state, m.Seconds()/p.Seconds(), t.name)
			}
		}
	}
}

func median(ss []sample) (time.Duration, time.Duration) {
	w := make([]time.Duration, len(ss))
	c := make([]time.Duration, len(ss))
	for i, s := range ss {
		w[i], c[i] = s.wall, s.cpu
	}
	slices.Sort(w)
	slices.Sort(c)
	return w[len(w)/2], c[len(c)/2]
}

func cpuSelf() time.Duration {
	var ru unix.Rusage
	_ = unix.Getrusage(unix.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// parry runs the check in this process (what the CLI does).
func parry() (sample, error) {
	c0, t0 := cpuSelf(), time.Now()
	_, err := dpkg.Verify(context.Background(), dpkg.Options{})
	return sample{time.Since(t0), cpuSelf() - c0}, err
}

// child runs a tool with its output discarded; both exit 1 or 2 when
// files differ, which is not an error here.
func child(args ...string) (sample, error) {
	cmd := exec.Command(args[0], args[1:]...)
	t0 := time.Now()
	err := cmd.Run()
	wall := time.Since(t0)
	var ee *exec.ExitError
	if errors.As(err, &ee) && ee.ExitCode() > 0 && ee.ExitCode() <= 2 {
		err = nil
	}
	if err != nil {
		return sample{}, err
	}
	ru, _ := cmd.ProcessState.SysUsage().(*syscall.Rusage)
	var cpu time.Duration
	if ru != nil {
		cpu = time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	return sample{wall, cpu}, nil
}

// packageFiles lists every path in dpkg's md5sums files.
func packageFiles() []string {
	lists, _ := filepath.Glob("/var/lib/dpkg/info/*.md5sums")
	var out []string
	for _, l := range lists {
		f, err := os.Open(l)
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if line := sc.Text(); len(line) > 34 {
				out = append(out, "/"+line[34:])
			}
		}
		f.Close()
	}
	return out
}

// evict drops the files' content from the page cache.
func evict(files []string) {
	for _, p := range files {
		fd, err := unix.Open(p, unix.O_RDONLY|unix.O_NONBLOCK|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0)
		if err != nil {
			continue
		}
		_ = unix.Fadvise(fd, 0, 0, unix.FADV_DONTNEED)
		unix.Close(fd)
	}
}
