package integrity

import (
	"context"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/fsnotify/fsnotify"
	"github.com/parryhq/parry/test/netns"
)

// TestReloadAddsPathAndRule: a reload that adds a path watches it at
// once (a file created there is found by the real inotify watcher, no
// restart), a new permission rule is applied to the files already there,
// and a path taken out again is no longer watched nor reported.
func TestReloadAddsPathAndRule(t *testing.T) {
	a, b := genTree(t), genTree(t)
	col := &collector{}
	cfg := testConfig(a)
	m := startWatcher(t, cfg, col)
	ctx := context.Background()

	next := testConfig(a, Rule{Path: filepath.Join(a, "f1.txt"), ModeMax: "0600"})
	next.Paths = append(next.Paths, PathSpec{Path: b})
	restart, err := m.Reconfigure(ctx, next)
	must(t, err)
	if len(restart) != 0 {
		t.Fatalf("needs restart: %v", restart)
	}
	if !col.has(func(f Finding) bool { return f.Kind == KindPermission && f.Path == filepath.Join(a, "f1.txt") }) {
		t.Fatalf("new rule not applied at reload: %v", col.snapshot())
	}
	created := filepath.Join(b, "sub", "new.conf")
	writeFile(t, created, "x")
	netns.Eventually(t, 5*time.Second, "finding in the added path", func() bool {
		return col.has(func(f Finding) bool { return f.Path == created })
	})
	if st := statusWithin(t, m, 5*time.Second); len(st.Roots) != 2 || st.Watches != 4 {
		t.Fatalf("after adding a path: roots %v, %d watches (want 4)", st.Roots, st.Watches)
	}

	_, err = m.Reconfigure(ctx, cfg)
	must(t, err)
	if st := statusWithin(t, m, 5*time.Second); st.Watches != 2 {
		t.Fatalf("after removing the path: %d watches, want 2", st.Watches)
	}
	for _, f := range statusWithin(t, m, 5*time.Second).Open {
		if strings.HasPrefix(f.Path, b) || f.Kind == KindPermission {
			t.Errorf("still open after the reload took it out: %+v", f)
		}
	}
	gone := filepath.Join(b, "f2.txt")
	before := len(col.snapshot())
	writeFile(t, gone, "not watched any more")
	(&barrier{dir: a}).wait(t, col)
	if slices.ContainsFunc(col.snapshot()[before:], func(f Finding) bool { return strings.HasPrefix(f.Path, b) }) {
		t.Fatal("a path taken out by the reload is still reported")
	}
}

// TestReloadKeepsPendingEvents: an event debounced but not yet checked when
// the reload comes is still checked after it. The file is changed after
// the reload's own check and no event follows, so only the pending check
// can find it.
func TestReloadKeepsPendingEvents(t *testing.T) {
	dir := genTree(t)
	synctest.Test(t, func(t *testing.T) {
		src := newFakeSource()
		col := &collector{}
		cfg := testConfig(dir)
		m, err := NewMonitor(cfg, Options{StateDir: t.TempDir(), Report: col.report,
			NewSource: func() (EventSource, error) { return src, nil }})
		must(t, err)
		_, err = m.Baseline(context.Background())
		must(t, err)
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- m.Run(ctx) }()
		synctest.Wait()

		f1 := filepath.Join(dir, "f1.txt")
		src.ev <- fsnotify.Event{Name: f1, Op: fsnotify.Write}
		synctest.Wait()
		next := cfg
		next.Debounce = 200 * 1e6 // 200ms, for events from now on
		restart, err := m.Reconfigure(context.Background(), next)
		must(t, err)
		if len(restart) != 0 || len(col.snapshot()) != 0 {
			t.Fatalf("reload: restart %v, findings %v", restart, col.snapshot())
		}
		writeFile(t, f1, "changed after the reload, no event")
		time.Sleep(DefaultDebounce)
		synctest.Wait()
		if !col.has(func(f Finding) bool { return f.Path == f1 }) {
			t.Fatal("the event pending at the reload was lost")
		}
		cancel()
		must(t, <-done)
	})
}

// TestReloadNeedsRestart: the hash algorithm (the baseline's) and enabled
// are not changed by a reload, and say so.
func TestReloadNeedsRestart(t *testing.T) {
	m, err := NewMonitor(testConfig(t.TempDir()), Options{StateDir: t.TempDir()})
	must(t, err)
	next := testConfig(t.TempDir())
	next.Hash = HashBLAKE3
	off := false
	next.Enabled = &off
	restart, err := m.Reconfigure(context.Background(), next)
	must(t, err)
	if strings.Join(restart, ",") != "integrity.hash,integrity.enabled" || m.Config().Hash != HashSHA256 {
		t.Fatalf("restart %v, hash in force %s", restart, m.Config().Hash)
	}
	if m.Config().Paths[0].Path != next.Paths[0].Path {
		t.Fatal("the rest of the reload was not applied")
	}
}

// TestReloadSecretRuleDropsCopy: a reload whose rules mark a file secret
// drops the copy kept of its content, and its next change shows no diff.
func TestReloadSecretRuleDropsCopy(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "app.conf")
	writeFile(t, p, "token=abc\n")
	m, _ := diffMonitor(t, dir, t.TempDir())
	ctx := context.Background()
	_, err := m.Baseline(ctx)
	must(t, err)
	if st := statusWithin(t, m, 5*time.Second); st.Copies != 1 {
		t.Fatalf("copies before the reload: %d", st.Copies)
	}
	next := m.Config()
	next.Rules = []Rule{{Path: p, Secret: true}}
	_, err = m.Reconfigure(ctx, next)
	must(t, err)
	if st := statusWithin(t, m, 5*time.Second); st.Copies != 0 {
		t.Fatalf("copies after marking it secret: %d", st.Copies)
	}
	writeFile(t, p, "token=xyz\n")
	fs, err := m.Check(ctx)
	must(t, err)
	if f := findingFor(fs, p); f == nil || len(f.Diff) != 0 {
		t.Fatalf("finding of the secret file: %+v", f)
	}
}
