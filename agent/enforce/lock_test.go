package enforce

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/netip"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/parryhq/parry/agent/api"
	"github.com/parryhq/parry/agent/audit"
	"github.com/parryhq/parry/agent/store"
	"github.com/parryhq/parry/firewall"
	"github.com/parryhq/parry/response"
)

// holdKernel is a kernel whose first Block hangs until released: a netlink
// call that does not return.
type holdKernel struct {
	once             sync.Once
	entered, release chan struct{}
}

func (k *holdKernel) Block([]firewall.Element) error {
	first := false
	k.once.Do(func() { first = true })
	if first {
		close(k.entered)
		<-k.release
	}
	return nil
}
func (k *holdKernel) Apply(_, add []firewall.Element) error    { return k.Block(add) }
func (k *holdKernel) AllElements() ([]firewall.Element, error) { return nil, nil }
func (k *holdKernel) Unblock([]netip.Prefix) error             { return nil }
func (k *holdKernel) SetAllow([]netip.Prefix) error            { return nil }
func (k *holdKernel) Lockdown(firewall.Lockdown) error         { return nil }
func (k *holdKernel) Release() error                           { return nil }

func newTestPath(t *testing.T, k Kernel, wait time.Duration) *Path {
	t.Helper()
	dir := t.TempDir()
	st, err := store.Open(filepath.Join(dir, "store.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	al, err := audit.Open(filepath.Join(dir, "audit.log"), time.Now)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { al.Close() })
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	rec := NewRecord(st, log, time.Now)
	rec.Use(al)
	dp, err := New(Options{Kernel: k, Store: st, Record: rec, Log: log, LockWait: wait,
		HostAddrs: func() ([]netip.Addr, error) { return nil, nil }}, GuardConfig{MinV4: 16, MinV6: 32})
	if err != nil {
		t.Fatal(err)
	}
	return dp
}

func blockOf(target string) response.Decision {
	return response.Decision{Action: response.ActionBlock, Targets: pfx(target), Until: time.Now().Add(time.Hour), Admin: true}
}

// A decision, or a read of the path's state (status, list), never waits
// without bound for a path held by a stuck change: after LockWait it is
// answered busy, and it changed nothing.
func TestEnforceWaitIsBounded(t *testing.T) {
	k := &holdKernel{entered: make(chan struct{}), release: make(chan struct{})}
	dp := newTestPath(t, k, 20*time.Millisecond)
	ctx := context.Background()
	first := make(chan error, 1)
	go func() { _, err := dp.Enforce(ctx, blockOf("203.0.113.1")); first <- err }()
	<-k.entered // the first block holds the path, stuck in the kernel

	if _, err := dp.Enforce(ctx, blockOf("203.0.113.2")); api.CodeOf(err) != api.CodeBusy {
		t.Fatalf("enforce behind a stuck change: %v, want %s", err, api.CodeBusy)
	}
	outs := dp.EnforceBatch(ctx, []response.Decision{blockOf("203.0.113.3"), blockOf("203.0.113.4")}, EnforceOptions{})
	for i, o := range outs {
		if api.CodeOf(o.Err) != api.CodeBusy {
			t.Fatalf("batch decision %d behind a stuck change: %v, want %s", i, o.Err, api.CodeBusy)
		}
	}
	if _, err := dp.Stats(ctx); api.CodeOf(err) != api.CodeBusy { // status behind a stuck change
		t.Fatalf("stats behind a stuck change: %v, want %s", err, api.CodeBusy)
	}
	if _, err := dp.Blocks(ctx); api.CodeOf(err) != api.CodeBusy { // list
		t.Fatalf("blocks behind a stuck change: %v, want %s", err, api.CodeBusy)
	}
	cctx, cancel := context.WithTimeout(ctx, time.Millisecond) // ends the wait before the bound, as a client's deadline would
	defer cancel()
	if _, err := dp.Enforce(cctx, blockOf("203.0.113.5")); !errors.Is(err, context.DeadlineExceeded) && api.CodeOf(err) != api.CodeBusy {
		t.Fatalf("enforce with its context ended while waiting: %v", err)
	}

	close(k.release)
	if err := <-first; err != nil {
		t.Fatal(err)
	}
	bs, err := dp.Blocks(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, b := range bs {
		got = append(got, b.Target)
	}
	if len(got) != 1 || got[0] != "203.0.113.1" {
		t.Errorf("blocks %v; want only the first (the busy ones changed nothing)", got)
	}
}
