package integrity

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"testing/synctest"
	"time"

	"github.com/fsnotify/fsnotify"

	"github.com/parryhq/parry/test/netns"
)

// statusWithin asks m for its status and fails the test when no answer
// comes within d (a hung monitor must fail the test, not hang it).
func statusWithin(t *testing.T, m *Monitor, d time.Duration) Status {
	t.Helper()
	type answer struct {
		st  Status
		err error
	}
	ch := make(chan answer, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), d)
		defer cancel()
		st, err := m.Status(ctx)
		ch <- answer{st, err}
	}()
	select {
	case a := <-ch:
		if a.err != nil {
			t.Fatalf("status: %v", a.err)
		}
		return a.st
	case <-time.After(d + 5*time.Second):
		t.Fatalf("status gave no answer within %v: the monitor is hung", d)
		return Status{}
	}
}

// TestWatcherSurvivesRenameSymlinkChurn is the deadlock of issue 10 item 2
// on the real file system: a watched directory renamed away, a symlink put
// in its place and the old one removed, over and over. fsnotify's reader
// then sends an error while holding its lock; a watcher loop that calls
// fsnotify's Remove or Add at that moment waited for that lock forever.
// Bounded in count and time; the watcher must still answer and still see
// new files afterwards.
func TestWatcherSurvivesRenameSymlinkChurn(t *testing.T) {
	requireRoot(t)
	dir := t.TempDir()
	target := t.TempDir()
	col := &collector{}
	m, err := NewMonitor(testConfig(dir), Options{StateDir: t.TempDir(), Report: col.report})
	must(t, err)
	_, err = m.Baseline(context.Background())
	must(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Errorf("Run did not return within 10s of cancel")
		}
	})
	netns.Eventually(t, 10*time.Second, "watcher running", func() bool { return statusWithin(t, m, 5*time.Second).Running })

	a, b := filepath.Join(dir, "a"), filepath.Join(dir, "b")
	stop := time.Now().Add(8 * time.Second)
	pace := time.NewTicker(2 * time.Millisecond) // pacing of the churn, not synchronisation
	defer pace.Stop()
	for i := 0; i < 400 && time.Now().Before(stop); i++ {
		steps := []func() error{
			func() error { return os.Mkdir(a, 0o755) },
			func() error { return os.WriteFile(filepath.Join(a, "f"), []byte("x"), 0o644) },
			func() error { return os.Rename(a, b) },
			func() error { return os.Symlink(target, a) },
			func() error { return os.RemoveAll(b) },
			func() error { return os.Remove(a) },
		}
		for _, step := range steps {
			must(t, step())
			<-pace.C
		}
		if i%50 == 0 {
			statusWithin(t, m, 5*time.Second)
		}
	}
	statusWithin(t, m, 5*time.Second)
	p := filepath.Join(dir, "after-churn")
	writeFile(t, p, "x")
	netns.Eventually(t, 10*time.Second, "finding for a file created after the churn", func() bool {
		return col.has(func(f Finding) bool { return f.Path == p && f.Kind == KindAdded })
	})
}

// stuckSource is an event source whose Add blocks, for one directory,
// until released: a watcher stuck inside its file event library.
type stuckSource struct {
	*fakeSource
	stuckDir string
	release  chan struct{}
	entered  chan struct{}
}

func (s *stuckSource) Add(d string) error {
	if d == s.stuckDir {
		close(s.entered)
		<-s.release
	}
	return s.fakeSource.Add(d)
}

// TestStuckMonitorAnswersBusy: with the watcher stuck while holding the
// monitor (inside fsnotify, as in the deadlock), every request returns an
// error wrapping ErrBusy once LockWait has passed, and nothing waits longer.
func TestStuckMonitorAnswersBusy(t *testing.T) {
	dir := genTree(t)
	synctest.Test(t, func(t *testing.T) {
		src := &stuckSource{fakeSource: newFakeSource(), stuckDir: filepath.Join(dir, "stuck"),
			release: make(chan struct{}), entered: make(chan struct{})}
		const wait = 3 * time.Second
		m, err := NewMonitor(testConfig(dir), Options{StateDir: t.TempDir(), LockWait: wait,
			NewSource: func() (EventSource, error) { return src, nil }})
		must(t, err)
		_, err = m.Baseline(context.Background())
		must(t, err)
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- m.Run(ctx) }()
		synctest.Wait()
		must(t, os.Mkdir(src.stuckDir, 0o755))
		src.ev <- fsnotify.Event{Name: src.stuckDir, Op: fsnotify.Create}
		<-src.entered

		ops := map[string]func(context.Context) error{
			"status":   func(ctx context.Context) error { _, err := m.Status(ctx); return err },
			"check":    func(ctx context.Context) error { _, err := m.Check(ctx); return err },
			"accept":   func(ctx context.Context) error { _, err := m.Accept(ctx, []string{dir}); return err },
			"baseline": func(ctx context.Context) error { _, err := m.Baseline(ctx); return err },
		}
		for name, op := range ops {
			start := time.Now()
			err := op(context.Background())
			if !errors.Is(err, ErrBusy) {
				t.Errorf("%s on a stuck monitor: %v, want ErrBusy", name, err)
			}
			if took := time.Since(start); took != wait {
				t.Errorf("%s answered after %v, want %v", name, took, wait)
			}
			// A shorter request deadline wins over LockWait.
			rctx, rcancel := context.WithTimeout(context.Background(), time.Second)
			start = time.Now()
			err = op(rctx)
			rcancel()
			if !errors.Is(err, ErrBusy) || !errors.Is(err, context.DeadlineExceeded) {
				t.Errorf("%s with a 1s deadline: %v, want ErrBusy and DeadlineExceeded", name, err)
			}
			if took := time.Since(start); took != time.Second {
				t.Errorf("%s with a 1s deadline answered after %v", name, took)
			}
		}
		close(src.release)
		if _, err := m.Status(context.Background()); err != nil {
			t.Errorf("status once released: %v", err)
		}
		cancel()
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	})
}
