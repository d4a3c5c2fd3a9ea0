package feed

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/parryhq/parry/agent/api"
)

func TestRun(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "list")
		if err := os.WriteFile(path, []byte("1.0.0.0/24\n2.0.0.0/24\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		c := cfgPath("run", path)
		c.Refresh = api.Duration(time.Hour)
		f := mustNew(t, c, Options{})

		var (
			mu      sync.Mutex
			applied [][3][]string
			stored  []*State
			fail    error
		)
		apply := func(ctx context.Context, g *Feed, u *Update) error {
			mu.Lock()
			defer mu.Unlock()
			applied = append(applied, diffStrings(u.Diff))
			if fail != nil {
				return fail
			}
			stored = append(stored, u.State())
			return nil
		}
		got := func() [][3][]string {
			mu.Lock()
			defer mu.Unlock()
			out := applied
			applied = nil
			return out
		}
		ctx, cancel := context.WithCancel(context.Background())
		kick := make(chan struct{})
		done := make(chan struct{})
		go func() { f.Run(ctx, apply, kick); close(done) }()

		synctest.Wait() // first refresh at once
		if d := cmp.Diff([][3][]string{{{"1.0.0.0/24", "2.0.0.0/24"}, nil, nil}}, got()); d != "" {
			t.Errorf("first (-want +got):\n%s", d)
		}
		time.Sleep(59 * time.Minute)
		synctest.Wait()
		if a := got(); len(a) != 0 {
			t.Errorf("refreshed before the interval: %v", a)
		}
		time.Sleep(time.Minute)
		synctest.Wait() // unchanged file: kept entries renewed
		if d := cmp.Diff([][3][]string{{nil, nil, {"1.0.0.0/24", "2.0.0.0/24"}}}, got()); d != "" {
			t.Errorf("renewal (-want +got):\n%s", d)
		}

		// A failing apply keeps the last good state and retries in a minute.
		if err := os.WriteFile(path, []byte("2.0.0.0/24\n3.0.0.0/24\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		mu.Lock()
		fail = errors.New("store full")
		mu.Unlock()
		kick <- struct{}{}
		synctest.Wait()
		want := [3][]string{{"3.0.0.0/24"}, {"1.0.0.0/24"}, {"2.0.0.0/24"}}
		if d := cmp.Diff([][3][]string{want}, got()); d != "" {
			t.Errorf("kicked (-want +got):\n%s", d)
		}
		if st := f.Status(); st.LastError == "" || st.Entries != 2 || !st.Next.Equal(time.Now().Add(time.Minute)) {
			t.Errorf("after failed apply: %+v", st)
		}
		mu.Lock()
		fail = nil
		mu.Unlock()
		time.Sleep(time.Minute)
		synctest.Wait()
		if d := cmp.Diff([][3][]string{want}, got()); d != "" {
			t.Errorf("retry (-want +got):\n%s", d)
		}
		if st := f.Status(); st.LastError != "" || len(stored) != 3 {
			t.Errorf("after retry: %+v, %d stored", st, len(stored))
		}
		cancel()
		<-done
	})
}
