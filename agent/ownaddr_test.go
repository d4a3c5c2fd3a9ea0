package agent

import (
	"context"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/parryhq/parry/agent/api"
	"github.com/parryhq/parry/agent/enforce"
	"github.com/parryhq/parry/response"
	"github.com/parryhq/parry/test/netns"
)

// fakeAddrs is an injected host: a settable address list and an address
// watcher that reports a change when told.
type fakeAddrs struct {
	mu    sync.Mutex
	addrs []netip.Addr
	kick  chan struct{}
}

func (f *fakeAddrs) read() ([]netip.Addr, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]netip.Addr(nil), f.addrs...), nil
}

func (f *fakeAddrs) add(s string) {
	f.mu.Lock()
	f.addrs = append(f.addrs, netip.MustParseAddr(s))
	f.mu.Unlock()
	f.kick <- struct{}{}
}

func (f *fakeAddrs) Run(ctx context.Context, changed func()) error {
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-f.kick:
			changed()
		}
	}
}

// TestNewOwnAddressLeavesBlocks: an address the host gains is refused by
// the guard as soon as the watcher reports it, and taken out of the
// active blocks that cover it: a single-address block is removed, a CIDR
// keeps the rest of its range with its decision and expiry; both audited.

func TestNewOwnAddressLeavesBlocks(t *testing.T) {
	clk := &clock{t: t0}
	fw := newFakeFW()
	cfg := testConfig(t)
	host := &fakeAddrs{addrs: []netip.Addr{netip.MustParseAddr("192.0.2.1")}, kick: make(chan struct{})}
	d, err := New(cfg, Options{Firewall: fw, Now: clk.Now, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		HostAddrs: host.read, AddrEvents: host})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	if err := d.heal.Reconcile("start"); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { d.heal.FollowAddrs(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })

	until := t0.Add(time.Hour)
	for _, tg := range []string{"203.0.113.0/29", "203.0.113.9", "198.18.0.0/24"} {
		if _, err := d.path.Enforce(context.Background(), response.Decision{ID: "id-" + tg, Action: response.ActionBlock,
			Targets: pfx(tg), Until: until, Reason: "r " + tg, Source: "cli"}); err != nil {
			t.Fatalf("block %s: %v", tg, err)
		}
	}
	clk.Add(10 * time.Minute)
	host.add("203.0.113.5")
	host.add("203.0.113.9")

	refused := func(tg string) bool {
		_, err := d.path.Enforce(context.Background(), response.Decision{ID: "x", Action: response.ActionBlock, Targets: pfx(tg), Until: until, Source: "cli"})
		return api.CodeOf(err) == api.CodeOwnAddress
	}
	if !netns.Poll(5*time.Second, time.Millisecond, func() bool { return refused("203.0.113.9") && refused("203.0.113.4/30") }) {
		t.Fatal("the guard did not learn the new addresses")
	}
	want := strings.Join([]string{
		"block 198.18.0.0/24 timeout=1h0m0s", // untouched
		"block 203.0.113.0/30 timeout=50m0s",
		"block 203.0.113.4/32 timeout=50m0s",
		"block 203.0.113.6/31 timeout=50m0s",
	}, "\n")
	if !netns.Poll(5*time.Second, time.Millisecond, func() bool { return fw.state() == want }) {
		t.Fatalf("kernel (-want +got):\n%s", cmp.Diff(want, fw.state()))
	}
	st := statusOf(t, d)
	if st.ActiveBlocks != 4 {
		t.Errorf("active blocks %d, want 4", st.ActiveBlocks)
	}
	var piece enforce.Block
	for _, b := range d.path.Active() {
		if b.Prefix == netip.MustParsePrefix("203.0.113.6/31") {
			piece = b
		}
	}
	if reason := piece.Decision.Reason; reason != "r 203.0.113.0/29" || piece.Until.UnixMilli() != until.UnixMilli() {
		t.Errorf("piece lost its decision or expiry: reason %q until %d", reason, piece.Until.UnixMilli())
	}
	if err := d.audit.Sync(); err != nil {
		t.Fatal(err)
	}
	log, _ := os.ReadFile(filepath.Join(cfg.StateDir, "audit.log"))
	for _, w := range []string{`"event":"own_address","fields":{"action":"carved"`, `"event":"own_address","fields":{"action":"unblocked"`} {
		if !strings.Contains(string(log), w) {
			t.Errorf("audit log lacks %s", w)
		}
	}
}
