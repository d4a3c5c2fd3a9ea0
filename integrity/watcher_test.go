package integrity

import (
	"context"
	"fmt"
	"github.com/parryhq/parry/test/netns"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// collector gathers reported findings.
type collector struct {
	mu sync.Mutex
	fs []Finding
}

func (c *collector) report(f Finding) {
	c.mu.Lock()
	c.fs = append(c.fs, f)
	c.mu.Unlock()
}

func (c *collector) snapshot() []Finding {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.fs)
}

func (c *collector) has(pred func(Finding) bool) bool {
	return slices.ContainsFunc(c.snapshot(), pred)
}

// startWatcher records a baseline of dir and runs the watcher until the test
// ends.
func startWatcher(t *testing.T, cfg Config, col *collector) *Monitor {
	t.Helper()
	m, err := NewMonitor(cfg, Options{StateDir: t.TempDir(), Report: col.report})
	must(t, err)
	_, err = m.Baseline(context.Background())
	must(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	netns.Eventually(t, 10*time.Second, "watcher running", func() bool { return statusWithin(t, m, 5*time.Second).Running })
	return m
}

// barrier creates a fresh file and waits for its finding: every event
// queued before it has then been debounced and checked.
type barrier struct {
	dir string
	n   int
}

func (b *barrier) wait(t *testing.T, col *collector) {
	t.Helper()
	b.n++
	p := filepath.Join(b.dir, fmt.Sprintf("zz-barrier-%d", b.n))
	writeFile(t, p, "b")
	netns.Eventually(t, 5*time.Second, "barrier "+p, func() bool {
		return col.has(func(f Finding) bool { return f.Path == p })
	})
}

func summary(fs []Finding, dir string) []string {
	var out []string
	for _, f := range fs {
		if strings.Contains(f.Path, "zz-barrier") {
			continue
		}
		s := strings.TrimPrefix(f.Path, dir+"/") + " " + f.Kind
		if f.Kind == KindChanged {
			var attrs []string
			for _, c := range f.Changes {
				if c.Attr != "mtime" && c.Attr != "ctime" && c.Attr != "size" && c.Attr != "nlink" {
					attrs = append(attrs, c.Attr)
				}
			}
			s += " " + strings.Join(attrs, ",")
		}
		out = append(out, s)
	}
	sort.Strings(out)
	return out
}

func TestWatcherReportsEachChangeOnce(t *testing.T) {
	requireRoot(t)
	dir := genTree(t)
	writeFile(t, filepath.Join(dir, "sub", "deeper", "x"), "x")
	col := &collector{}
	startWatcher(t, testConfig(dir), col)
	b := &barrier{dir: dir}
	p := func(rel string) string { return filepath.Join(dir, rel) }
	steps := []struct {
		name string
		op   func(t *testing.T)
		want []string
	}{
		{"create", func(t *testing.T) { writeFile(t, p("new.txt"), "hello") }, []string{"new.txt added"}},
		{"write", func(t *testing.T) { writeFile(t, p("f1.txt"), "rewritten") }, []string{"f1.txt changed hash"}},
		{"atomic save", func(t *testing.T) {
			writeFile(t, p(".f2.txt.tmp"), "saved by an editor")
			must(t, os.Rename(p(".f2.txt.tmp"), p("f2.txt")))
		}, []string{"f2.txt changed hash,inode"}},
		{"chmod", func(t *testing.T) { must(t, os.Chmod(p("f3.txt"), 0o600)) }, []string{"f3.txt changed mode"}},
		{"chown", func(t *testing.T) { must(t, os.Lchown(p("f4.txt"), 1000, 1000)) }, []string{"f4.txt changed uid,gid"}},
		{"delete", func(t *testing.T) { must(t, os.Remove(p("f0.txt"))) }, []string{"f0.txt removed"}},
		{"rename dir", func(t *testing.T) { must(t, os.Rename(p("sub"), p("moved"))) }, []string{
			"moved added", "moved/deeper added", "moved/deeper/x added",
			"moved/g0.conf added", "moved/g1.conf added", "moved/g2.conf added", "moved/g3.conf added", "moved/g4.conf added",
			"sub removed", "sub/deeper removed", "sub/deeper/x removed",
			"sub/g0.conf removed", "sub/g1.conf removed", "sub/g2.conf removed", "sub/g3.conf removed", "sub/g4.conf removed",
		}},
		{"write in moved dir", func(t *testing.T) { writeFile(t, p("moved/deeper/x"), "changed") }, nil}, // already reported as added; content differs from the added state
		{"new subdirectory filled at once", func(t *testing.T) {
			must(t, os.Mkdir(p("fresh"), 0o755))
			for i := range 20 {
				writeFile(t, p(fmt.Sprintf("fresh/%02d", i)), "x")
			}
			writeFile(t, p("fresh/a/b/c"), "deep")
		}, append([]string{"fresh added", "fresh/a added", "fresh/a/b added", "fresh/a/b/c added"}, func() []string {
			var s []string
			for i := range 20 {
				s = append(s, fmt.Sprintf("fresh/%02d added", i))
			}
			return s
		}()...)},
	}
	seen := 0
	for _, s := range steps {
		s.op(t)
		b.wait(t, col)
		all := col.snapshot()
		got := summary(all[seen:], dir)
		seen = len(all)
		want := slices.Clone(s.want)
		sort.Strings(want)
		if s.name == "write in moved dir" {
			// A second change of an added file is a new state: reported once.
			want = []string{"moved/deeper/x added"}
		}
		if !slices.Equal(got, want) {
			t.Errorf("%s:\n got %q\nwant %q", s.name, got, want)
		}
	}
}

func TestWatcherOverflowRescans(t *testing.T) {
	requireRoot(t)
	dir := t.TempDir()
	must(t, os.Mkdir(filepath.Join(dir, "flood"), 0o755)) // watched from the start
	block := make(chan struct{})
	var once sync.Once
	col := &collector{}
	report := func(f Finding) {
		col.report(f)
		if strings.HasSuffix(f.Path, "/trigger") {
			once.Do(func() { <-block }) // hold the watcher so the kernel queue overflows
		}
	}
	// The watcher's own queue (between fsnotify and its loop) is what
	// overflows first now: kept small here so the flood below fills it.
	// Every flooded file is reported on its own here (no burst findings).
	cfg := testConfig(dir)
	cfg.BurstThreshold = 100000
	m, err := NewMonitor(cfg, Options{StateDir: t.TempDir(), Report: report, EventQueue: 1000})
	must(t, err)
	_, err = m.Baseline(context.Background())
	must(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	defer func() { cancel(); <-done }()
	netns.Eventually(t, 10*time.Second, "watcher running", func() bool { return col != nil && statusWithin(t, m, 5*time.Second).Running })

	writeFile(t, filepath.Join(dir, "trigger"), "x")
	netns.Eventually(t, 5*time.Second, "trigger finding", func() bool {
		return col.has(func(f Finding) bool { return strings.HasSuffix(f.Path, "/trigger") })
	})
	// 2,000 files created and written to round-robin 11 times make 24,000
	// events (round-robin, so the kernel cannot merge them): far more than
	// the watcher's queue of 1,000 holds while its loop is held.
	const n = 2000
	fds := make([]int, n)
	for i := range n {
		fd, err := unix.Open(filepath.Join(dir, "flood", fmt.Sprint(i)), unix.O_CREAT|unix.O_WRONLY|unix.O_CLOEXEC, 0o644)
		must(t, err)
		fds[i] = fd
	}
	for range 11 {
		for _, fd := range fds {
			_, err := unix.Write(fd, []byte("x"))
			must(t, err)
		}
	}
	for _, fd := range fds {
		unix.Close(fd)
	}
	close(block)
	netns.Eventually(t, 60*time.Second, "overflow and every flooded file reported", func() bool {
		fs := col.snapshot()
		added := 0
		overflow := false
		for _, f := range fs {
			if f.Kind == KindAdded && strings.Contains(f.Path, "/flood/") {
				added++
			}
			overflow = overflow || f.Kind == KindOverflow
		}
		return overflow && added == n
	})
	if st := statusWithin(t, m, 5*time.Second); st.Overflows == 0 || st.Rescans < 2 {
		t.Errorf("status after overflow: %+v", st)
	}
	// And each file once.
	count := map[string]int{}
	for _, f := range col.snapshot() {
		count[f.Path+" "+f.Kind]++
	}
	for k, c := range count {
		if c > 1 && !strings.HasSuffix(k, " "+KindOverflow) {
			t.Errorf("%s reported %d times", k, c)
		}
	}
}

func TestWatcherRemediatesRuleAtOnce(t *testing.T) {
	requireRoot(t)
	dir := genTree(t)
	p := filepath.Join(dir, "sub", "g0.conf")
	col := &collector{}
	m := startWatcher(t, testConfig(dir, Rule{Path: dir + "/sub/*.conf", Deny: []string{"world_writable", "world_readable"}, Remediate: true}), col)
	// The baseline itself violated the rule: remediated when recorded.
	netns.Eventually(t, 5*time.Second, "baseline remediation", func() bool {
		var st unix.Stat_t
		return unix.Lstat(p, &st) == nil && st.Mode&0o777 == 0o640
	})
	seen := len(col.snapshot())
	must(t, os.Chmod(p, 0o666))
	netns.Eventually(t, 5*time.Second, "mode put back", func() bool {
		var st unix.Stat_t
		return unix.Lstat(p, &st) == nil && st.Mode&0o777 == 0o660
	})
	b := &barrier{dir: dir}
	b.wait(t, col)
	var perm []Finding
	for _, f := range col.snapshot()[seen:] {
		if f.Kind == KindPermission {
			perm = append(perm, f)
		}
	}
	if len(perm) != 1 || perm[0].Remediation != "mode 0666 → 0660" {
		t.Fatalf("permission findings after chmod: %v", perm)
	}
	if st := statusWithin(t, m, 5*time.Second); len(st.Open) == 0 {
		t.Errorf("no open findings in status")
	}
}
