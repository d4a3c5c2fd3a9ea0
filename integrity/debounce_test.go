package integrity

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"github.com/parryhq/parry/agent/api"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/fsnotify/fsnotify"
	"github.com/zeebo/blake3"
	"golang.org/x/sys/unix"
)

// fakeSource is an injected event source.
type fakeSource struct {
	ev   chan fsnotify.Event
	errs chan error
	mu   sync.Mutex
	dirs map[string]bool
	fail map[string]error // Add fails for these directories
}

func newFakeSource() *fakeSource {
	return &fakeSource{ev: make(chan fsnotify.Event), errs: make(chan error), dirs: map[string]bool{}}
}

func (s *fakeSource) Add(d string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.fail[d]; err != nil {
		return err
	}
	s.dirs[d] = true
	return nil
}

func (s *fakeSource) Remove(d string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.dirs, d)
	return nil
}
func (s *fakeSource) Events() <-chan fsnotify.Event { return s.ev }
func (s *fakeSource) Errors() <-chan error          { return s.errs }
func (s *fakeSource) Close() error                  { return nil }

// TestDebounceWithInjectedEvents drives the watcher with injected events on
// a fake clock: a burst on one path gives one check after the path is quiet;
// a path that never goes quiet is checked after the maximum delay; an
// event's verb is not trusted; an overflow rescans.
func TestDebounceWithInjectedEvents(t *testing.T) {
	dir := genTree(t)
	synctest.Test(t, func(t *testing.T) {
		src := newFakeSource()
		col := &collector{}
		m, err := NewMonitor(testConfig(dir), Options{StateDir: t.TempDir(), Report: col.report,
			NewSource: func() (EventSource, error) { return src, nil }})
		must(t, err)
		_, err = m.Baseline(context.Background())
		must(t, err)
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- m.Run(ctx) }()
		synctest.Wait()
		src.mu.Lock()
		n := len(src.dirs)
		src.mu.Unlock()
		if n != 2 {
			t.Fatalf("watching %d directories, want 2 (root and sub)", n)
		}
		count := func(p string) int {
			n := 0
			for _, f := range col.snapshot() {
				if f.Path == p {
					n++
				}
			}
			return n
		}

		// A burst of 20 events 10ms apart: checked once, 50ms after the last.
		f1 := filepath.Join(dir, "f1.txt")
		writeFile(t, f1, "changed")
		for range 20 {
			src.ev <- fsnotify.Event{Name: f1, Op: fsnotify.Write}
			time.Sleep(10 * time.Millisecond)
			synctest.Wait()
			if n := count(f1); n != 0 {
				t.Fatalf("checked during the burst")
			}
		}
		time.Sleep(DefaultDebounce)
		synctest.Wait()
		if n := count(f1); n != 1 {
			t.Fatalf("after the burst: %d findings for f1, want 1", n)
		}

		// The verb is not trusted: a "remove" of a file that is unchanged
		// gives nothing.
		f2 := filepath.Join(dir, "f2.txt")
		src.ev <- fsnotify.Event{Name: f2, Op: fsnotify.Remove}
		time.Sleep(time.Second)
		synctest.Wait()
		if n := count(f2); n != 0 {
			t.Fatalf("unchanged file reported after a remove event")
		}

		// Never quiet: checked within the maximum delay (500ms).
		f3 := filepath.Join(dir, "f3.txt")
		writeFile(t, f3, "busy")
		start := time.Now()
		for count(f3) == 0 {
			if time.Since(start) > 600*time.Millisecond {
				t.Fatal("a busy path was never checked")
			}
			src.ev <- fsnotify.Event{Name: f3, Op: fsnotify.Write}
			time.Sleep(20 * time.Millisecond)
			synctest.Wait()
		}

		// Overflow: a change that produced no event is found by the rescan.
		f4 := filepath.Join(dir, "sub", "g4.conf")
		writeFile(t, f4, "silent change")
		src.errs <- fsnotify.ErrEventOverflow
		synctest.Wait()
		if count(f4) != 1 || !col.has(func(f Finding) bool { return f.Kind == KindOverflow }) {
			t.Fatalf("overflow: %v", col.snapshot())
		}
		// Events outside the selection are ignored.
		src.ev <- fsnotify.Event{Name: "/elsewhere/x", Op: fsnotify.Create}
		cancel()
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(dir); err != nil {
			t.Fatal(err)
		}
	})
}

// TestWatchLimitReported: a directory whose watch cannot be added (ENOSPC)
// is reported once and scanned at once; the others are watched.
func TestWatchLimitReported(t *testing.T) {
	dir := genTree(t)
	synctest.Test(t, func(t *testing.T) {
		src := newFakeSource()
		src.fail = map[string]error{filepath.Join(dir, "sub"): unix.ENOSPC}
		col := &collector{}
		m, err := NewMonitor(testConfig(dir), Options{StateDir: t.TempDir(), Report: col.report,
			NewSource: func() (EventSource, error) { return src, nil }})
		must(t, err)
		_, err = m.Baseline(context.Background())
		must(t, err)
		writeFile(t, filepath.Join(dir, "sub", "while-down"), "x")
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- m.Run(ctx) }()
		synctest.Wait()
		st, err := m.Status(context.Background())
		must(t, err)
		if st.Watches != 1 || st.WatchFailures != 1 {
			t.Errorf("watches %d, failures %d; want 1 and 1", st.Watches, st.WatchFailures)
		}
		var limit, found int
		for _, f := range col.snapshot() {
			if f.Kind == KindWatchLimit && f.Path == filepath.Join(dir, "sub") {
				limit++
			}
			if f.Kind == KindAdded && f.Path == filepath.Join(dir, "sub", "while-down") {
				found++
			}
		}
		if limit != 1 || found != 1 {
			t.Errorf("watch_limit findings %d, added findings %d; want 1 and 1: %v", limit, found, col.snapshot())
		}
		cancel()
		must(t, <-done)
	})
}

// TestIORateLimit reads 3 MiB at 1 MiB/s on the fake clock: the first MiB
// is the burst, the other two take two seconds.
func TestIORateLimit(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "big"), strings.Repeat("z", 3<<20))
	synctest.Test(t, func(t *testing.T) {
		cfg := testConfig(dir)
		cfg.IORate = "1MiB"
		sc, err := NewScanner(cfg)
		must(t, err)
		start := time.Now()
		ents, err := sc.Scan(context.Background())
		must(t, err)
		if took := time.Since(start); took < 2*time.Second || took > 3*time.Second {
			t.Errorf("3 MiB at 1 MiB/s took %s on the fake clock, want 2s..3s", took)
		}
		e := ents[filepath.Join(dir, "big")]
		if want := blake3OrSHA(t, HashSHA256, strings.Repeat("z", 3<<20)); e.HashHex() != want {
			t.Error("rate-limited read hashed wrongly")
		}
	})
}

func blake3OrSHA(t *testing.T, algo, content string) string {
	t.Helper()
	if algo == HashBLAKE3 {
		sum := blake3.Sum256([]byte(content))
		return hex.EncodeToString(sum[:])
	}
	sum := sha256.Sum256([]byte(content))
	return hex.EncodeToString(sum[:])
}

func TestHashAlgorithms(t *testing.T) {
	dir := t.TempDir()
	content := strings.Repeat("parry", 500000) // 2.5 MB: several reads
	writeFile(t, filepath.Join(dir, "f"), content)
	for _, algo := range []string{HashSHA256, HashBLAKE3} {
		cfg := testConfig(dir)
		cfg.Hash = algo
		e := scanMap(t, cfg)[filepath.Join(dir, "f")]
		got := e.HashHex()
		if want := blake3OrSHA(t, algo, content); got != want {
			t.Errorf("%s: got %s, want %s", algo, got, want)
		}
	}
}

// TestScheduledCheck: a change that produced no event is found by the
// scheduled full check, on the fake clock.
func TestScheduledCheck(t *testing.T) {
	dir := genTree(t)
	synctest.Test(t, func(t *testing.T) {
		src := newFakeSource()
		col := &collector{}
		cfg := testConfig(dir)
		iv := api.Duration(10 * time.Minute)
		cfg.ScanInterval = &iv
		m, err := NewMonitor(cfg, Options{StateDir: t.TempDir(), Report: col.report,
			NewSource: func() (EventSource, error) { return src, nil }})
		must(t, err)
		_, err = m.Baseline(context.Background())
		must(t, err)
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- m.Run(ctx) }()
		synctest.Wait()
		p := filepath.Join(dir, "f2.txt")
		writeFile(t, p, "silently changed")
		time.Sleep(iv.D() - time.Second)
		synctest.Wait()
		if col.has(func(f Finding) bool { return f.Path == p }) {
			t.Fatal("found before the scheduled check")
		}
		time.Sleep(2 * time.Second)
		synctest.Wait()
		if !col.has(func(f Finding) bool { return f.Path == p && f.Kind == KindChanged }) {
			t.Fatalf("scheduled check missed the change: %v", col.snapshot())
		}
		cancel()
		must(t, <-done)
	})
}
