package integrity

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/parryhq/parry/agent/api"
	"golang.org/x/sys/unix"
)

// TestFastCheckReadsOnlyChangedMetadata: a fast check takes the hash of a
// file whose inode, size, mtime and ctime are unchanged from its last
// state without reading it (a baseline hash altered in memory goes
// unnoticed by it, and is found by the full check), and re-reads a file
// whose content changed even with its size and mtime put back (utimes
// cannot set ctime back).
func TestFastCheckReadsOnlyChangedMetadata(t *testing.T) {
	dir := genTree(t)
	m, err := NewMonitor(testConfig(dir), Options{StateDir: t.TempDir()})
	must(t, err)
	ctx := context.Background()
	_, err = m.Baseline(ctx)
	must(t, err)
	if fs, err := m.FastCheck(ctx); err != nil || len(fs) != 0 {
		t.Fatalf("fast check of an unchanged tree: %v %v", fs, err)
	}

	untouched := filepath.Join(dir, "sub", "g1.conf")
	e := m.base.Entries[untouched]
	e.Hash[0] ^= 0xff
	m.base.Entries[untouched] = e
	if fs, _ := m.FastCheck(ctx); len(fs) != 0 {
		t.Fatalf("fast check re-read a file whose metadata did not change: %v", fs)
	}
	st, _ := m.Status(ctx)
	if !st.LastScanFast {
		t.Error("status: last scan not marked fast")
	}

	edited := filepath.Join(dir, "sub", "g2.conf")
	rewriteKeepTimes(t, edited, "key=X\n") // same size, same mtime
	fs, err := m.FastCheck(ctx)
	must(t, err)
	if f := findingFor(fs, edited); f == nil || !strings.Contains(f.Detail, "hash ") {
		t.Fatalf("fast check missed a content change with mtime put back: %v", fs)
	}
	if findingFor(fs, untouched) != nil {
		t.Fatalf("fast check read the untouched file: %v", fs)
	}
	fs, err = m.Check(ctx)
	must(t, err)
	if findingFor(fs, untouched) == nil || findingFor(fs, edited) == nil {
		t.Fatalf("full check: want both files, got %v", fs)
	}
	if st, _ := m.Status(ctx); st.LastScanFast || st.LastFullScan.IsZero() {
		t.Errorf("status after a full check: fast %v, last full %v", st.LastScanFast, st.LastFullScan)
	}
}

// TestFastCheckSeesMetadataOnlyChanges: a mode change, an xattr and a
// renamed-over file (new inode, same size and mtime) are all found by a
// fast check.
func TestFastCheckSeesMetadataOnlyChanges(t *testing.T) {
	requireRoot(t)
	dir := genTree(t)
	m, err := NewMonitor(testConfig(dir), Options{StateDir: t.TempDir()})
	must(t, err)
	ctx := context.Background()
	_, err = m.Baseline(ctx)
	must(t, err)

	mode, xattr, swapped := filepath.Join(dir, "f1.txt"), filepath.Join(dir, "f2.txt"), filepath.Join(dir, "sub", "g3.conf")
	must(t, os.Chmod(mode, 0o666))
	if err := unix.Setxattr(xattr, "user.parry", []byte("x"), 0); err != nil {
		t.Skipf("user xattrs not supported here: %v", err)
	}
	st, err := os.Stat(swapped)
	must(t, err)
	tmp := swapped + ".new"
	writeFile(t, tmp, "key=9\n") // same size as key=3
	must(t, os.Chtimes(tmp, st.ModTime(), st.ModTime()))
	must(t, os.Rename(tmp, swapped))

	fs, err := m.FastCheck(ctx)
	must(t, err)
	for p, want := range map[string]string{mode: "mode", xattr: "xattrs", swapped: "hash"} {
		f := findingFor(fs, p)
		if f == nil || !strings.Contains(f.Detail, want) {
			t.Errorf("%s: want a finding naming %s, got %+v", p, want, f)
		}
	}
}

// TestScheduledChecksFastUntilFullDue: with full_check_interval, the
// scheduled check is fast until that interval has passed since the last
// full one.
func TestScheduledChecksFastUntilFullDue(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	cfg := testConfig(t.TempDir())
	full := api.Duration(2 * time.Hour)
	cfg.FullCheckInterval = &full
	m, err := NewMonitor(cfg, Options{StateDir: t.TempDir(), Now: func() time.Time { return now }})
	must(t, err)
	m.st.lastFull = now
	for _, c := range []struct {
		after time.Duration
		full  bool
	}{{time.Hour, false}, {2*time.Hour - time.Second, false}, {2 * time.Hour, true}} {
		now = m.st.lastFull.Add(c.after)
		if got := m.fullDue(); got != c.full {
			t.Errorf("%s after the last full check: full due %v, want %v", c.after, got, c.full)
		}
	}
	zero := api.Duration(0)
	m.cfg.FullCheckInterval = &zero
	if !m.fullDue() {
		t.Error("full_check_interval 0: a scheduled check must be full")
	}
}
