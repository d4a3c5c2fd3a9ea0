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
