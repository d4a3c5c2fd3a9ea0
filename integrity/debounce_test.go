package integrity

import (
	"context"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/fsnotify/fsnotify"
)

// fakeSource is an injected event source.
type fakeSource struct {
	ev   chan fsnotify.Event
	errs chan error
	mu   sync.Mutex
	dirs map[string]bool
}

func newFakeSource() *fakeSource {
	return &fakeSource{ev: make(chan fsnotify.Event), errs: make(chan error), dirs: map[string]bool{}}
}

func (s *fakeSource) Add(d string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
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
