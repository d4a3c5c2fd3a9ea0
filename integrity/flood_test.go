package integrity

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/parryhq/parry/test/netns"
	"golang.org/x/sys/unix"
)

// createFiles creates n empty files named prefix0..prefix(n-1) in dir.
func createFiles(t *testing.T, dir, prefix string, n int) {
	t.Helper()
	for i := range n {
		fd, err := unix.Open(filepath.Join(dir, fmt.Sprintf("%s%d", prefix, i)), unix.O_CREAT|unix.O_WRONLY|unix.O_CLOEXEC, 0o644)
		must(t, err)
		unix.Close(fd)
	}
}

// TestFloodOfNewFilesIsAggregated is issue 10 item 6 on the real file
// system, bounded: 20,000 files created in one watched directory, and 2,000
// more spread over 200 directories. Every file is accounted for exactly
// once (reported on its own or counted in a burst finding), while the
// reports (each an audit line and a signal) and the open findings stay
// far below the number of files.
func TestFloodOfNewFilesIsAggregated(t *testing.T) {
	requireRoot(t)
	dir := t.TempDir()
	flood := filepath.Join(dir, "flood")
	must(t, os.Mkdir(flood, 0o755))
	spread := filepath.Join(dir, "spread")
	must(t, os.Mkdir(spread, 0o755))
	cfg := testConfig(dir)
	cfg.BurstThreshold = 50
	iv := time.Second
	cfg.BurstInterval = &iv
	col := &collector{}
	m := startWatcher(t, cfg, col)

	const n, dirs, perDir = 20000, 200, 10
	createFiles(t, flood, "f", n)
	for d := range dirs {
		sub := filepath.Join(spread, fmt.Sprint(d))
		must(t, os.Mkdir(sub, 0o755))
		createFiles(t, sub, "g", perDir)
	}
	total := n + dirs + dirs*perDir // files, the 200 directories, their files
	var individual, folded int
	netns.Eventually(t, 60*time.Second, "every created path accounted for", func() bool {
		individual, folded = 0, 0
		for _, f := range col.snapshot() {
			switch {
			case f.Kind == KindAdded && (strings.HasPrefix(f.Path, flood+"/") || strings.HasPrefix(f.Path, spread+"/")):
				individual++
			case f.Kind == KindBurst:
				folded += f.Count
			}
		}
		return individual+folded >= total
	})
	t.Logf("accounted: %d one by one, %d in bursts", individual, folded)
	if individual+folded != total {
		t.Errorf("%d reported one by one + %d in bursts = %d, want %d (each path once)", individual, folded, individual+folded, total)
	}
	fs := col.snapshot()
	if len(fs) > 2500 {
		t.Errorf("%d findings reported for %d new paths: not aggregated", len(fs), total)
	}
	st := statusWithin(t, m, 5*time.Second)
	if len(st.Open) > 2500 {
		t.Errorf("%d open findings, want far fewer than %d", len(st.Open), total)
	}
	if st.Aggregated != uint64(folded) {
		t.Errorf("status aggregated %d, burst findings count %d", st.Aggregated, folded)
	}
	var bursts []Finding
	for _, f := range st.Open {
		if f.Kind == KindBurst {
			bursts = append(bursts, f)
		}
	}
	if len(bursts) == 0 || !strings.Contains(bursts[0].Detail, "files created") {
		t.Fatalf("no open burst finding: %v", bursts)
	}
	for _, b := range bursts {
		if b.Path != flood && b.Path != dir && b.Path != spread {
			t.Errorf("burst finding under %s: want the flooded directory, or a root/parent when spread", b.Path)
		}
	}
	t.Logf("%d paths: %d reported one by one, %d aggregated into %d burst findings; %d open", total, individual, folded, len(bursts), len(st.Open))

	// Accepting the directory closes its burst finding.
	_, err := m.Accept(context.Background(), []string{flood})
	must(t, err)
	for _, f := range statusWithin(t, m, 5*time.Second).Open {
		if f.Path == flood {
			t.Errorf("open after accept: %v", f)
		}
	}
}

// TestMaxOpenFindings: beyond max_open_findings new findings are still
// reported but not kept open, and status counts them.
func TestMaxOpenFindings(t *testing.T) {
	dir := t.TempDir()
	cfg := testConfig(dir)
	cfg.MaxOpenFindings = 100
	cfg.BurstThreshold = 100000 // no aggregation here
	col := &collector{}
	m, err := NewMonitor(cfg, Options{StateDir: t.TempDir(), Report: col.report})
	must(t, err)
	_, err = m.Baseline(context.Background())
	must(t, err)
	createFiles(t, dir, "f", 500)
	fs, err := m.Check(context.Background())
	must(t, err)
	if len(fs) != 100 {
		t.Errorf("check gave %d open findings, want 100", len(fs))
	}
	st := statusWithin(t, m, 5*time.Second)
	if len(st.Open) != 100 || st.OpenDropped != 400 || st.MaxOpenFindings != 100 {
		t.Errorf("status: %d open, %d dropped, max %d; want 100, 400, 100", len(st.Open), st.OpenDropped, st.MaxOpenFindings)
	}
	if n := len(col.snapshot()); n != 500 {
		t.Errorf("%d findings reported, want 500 (each still reported once)", n)
	}
}

// TestBurstAggregationRules drives the aggregation with a fake clock:
// the per-directory threshold, one burst finding per directory and
// interval with the right count, folding at once while a burst is open,
// the global limit folding under the root (and the interval after a global
// flood), and critical findings never folded.
func TestBurstAggregationRules(t *testing.T) {
	dir := t.TempDir()
	now := time.Date(2026, 12, 1, 9, 0, 0, 0, time.UTC)
	cfg := testConfig(dir)
	cfg.BurstThreshold = 3
	iv := 10 * time.Second
	cfg.BurstInterval = &iv
	col := &collector{}
	m, err := NewMonitor(cfg, Options{StateDir: t.TempDir(), Report: col.report, Now: func() time.Time { return now }})
	must(t, err)
	_, err = m.Baseline(context.Background())
	must(t, err)
	ino := uint64(1000)
	add := func(p string, mode uint32) {
		ino++
		m.evaluate(filepath.Join(dir, p), Entry{Type: TypeFile, Mode: mode, Inode: ino, Nlink: 1}, false)
	}
	count := func(kind, path string) (n, sum int) {
		for _, f := range col.snapshot() {
			if f.Kind == kind && f.Path == filepath.Join(dir, path) {
				n++
				sum += f.Count
			}
		}
		return n, sum
	}
	individual := func(prefix string) int {
		n := 0
		for _, f := range col.snapshot() {
			if f.Kind == KindAdded && strings.HasPrefix(f.Path, filepath.Join(dir, prefix)+"/") {
				n++
			}
		}
		return n
	}

	for i := range 5 {
		add(fmt.Sprintf("a/%d", i), 0o644)
	}
	add("a/suid", 0o4755) // critical: reported although over the threshold
	if got := individual("a"); got != 4 {
		t.Errorf("%d reported one by one in a/, want 3 + the critical one", got)
	}
	m.flushBursts(false)
	if n, _ := count(KindBurst, "a"); n != 0 {
		t.Errorf("burst reported before its interval ended")
	}
	now = now.Add(iv)
	m.flushBursts(false)
	if n, sum := count(KindBurst, "a"); n != 1 || sum != 2 {
		t.Errorf("a/: %d burst findings for %d files, want 1 for 2", n, sum)
	}
	// While a/'s burst is open, new files there fold at once.
	for i := range 4 {
		add(fmt.Sprintf("a/later%d", i), 0o644)
	}
	if got := individual("a"); got != 4 {
		t.Errorf("a/ reported %d one by one after its burst opened, want still 4", got)
	}
	// The global limit (10 × 3 = 30 a interval): 40 directories of one
	// file each: 30 one by one, 10 folded under the root.
	for i := range 40 {
		add(fmt.Sprintf("d%02d/x", i), 0o644)
	}
	if got := individual(""); got != 4+30 {
		t.Errorf("%d reported one by one in all, want 34", got)
	}
	now = now.Add(iv)
	m.flushBursts(false)
	if n, sum := count(KindBurst, "a"); n != 2 || sum != 6 {
		t.Errorf("a/: %d burst findings for %d files, want 2 for 6", n, sum)
	}
	if n, sum := count(KindBurst, ""); n != 1 || sum != 10 {
		t.Errorf("root: %d burst findings for %d files, want 1 for 10", n, sum)
	}
	// The interval after a global flood folds everything by root.
	add("fresh/x", 0o644)
	if got := individual("fresh"); got != 0 {
		t.Errorf("reported one by one right after a global flood")
	}
	// Two quiet intervals later, back to normal.
	now = now.Add(3 * iv)
	m.flushBursts(false)
	add("calm/x", 0o644)
	if got := individual("calm"); got != 1 {
		t.Errorf("after quiet intervals: %d reported one by one, want 1", got)
	}
	st, err := m.Status(context.Background())
	must(t, err)
	if st.Aggregated != 2+4+10+1 {
		t.Errorf("status aggregated %d, want 17", st.Aggregated)
	}
}
