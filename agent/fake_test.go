package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/parryhq/parry/agent/api"
	"github.com/parryhq/parry/firewall"
)

// fakeFW is an in-memory firewall with failure injection.
type fakeFW struct {
	mu          sync.Mutex
	present     bool
	elems       map[netip.Prefix]time.Duration
	allow       []netip.Prefix
	lockdown    *firewall.Lockdown
	failBlock   error
	failUnblock error
	ensures     int
	blockCalls  int // Block calls, failed or not
	blockSizes  []int
	unblocks    int // Unblock calls
	// hold, when set, makes Block wait for it to be closed after telling
	// entered (group commit tests: a commit in flight).
	hold, entered chan struct{}
	// failIf, when set, fails the Block calls it returns an error for.
	failIf func([]firewall.Element) error
}

func newFakeFW() *fakeFW { return &fakeFW{elems: map[netip.Prefix]time.Duration{}} }

func (f *fakeFW) Ensure() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.present = true
	f.ensures++
	return nil
}

func (f *fakeFW) Block(elems []firewall.Element) error {
	f.mu.Lock()
	hold, entered := f.hold, f.entered
	f.mu.Unlock()
	if hold != nil {
		select {
		case entered <- struct{}{}:
		default:
		}
		<-hold
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.blockCalls++
	f.blockSizes = append(f.blockSizes, len(elems))
	if f.failBlock != nil {
		return f.failBlock
	}
	if f.failIf != nil {
		if err := f.failIf(elems); err != nil {
			return err
		}
	}
	if !f.present {
		return errors.New("no table")
	}
	for _, e := range elems {
		f.elems[e.Prefix] = e.Timeout
	}
	return nil
}

func (f *fakeFW) Apply(del, add []firewall.Element) error {
	f.mu.Lock()
	if f.failUnblock != nil && len(del) > 0 {
		f.mu.Unlock()
		return f.failUnblock
	}
	if f.failBlock == nil && f.present {
		for _, e := range del {
			delete(f.elems, e.Prefix)
		}
	}
	if len(add) == 0 { // an unblock
		defer f.mu.Unlock()
		f.unblocks++
		if f.failBlock != nil {
			return f.failBlock
		}
		return nil
	}
	f.mu.Unlock()
	return f.Block(add)
}

// covers reports whether an element holds the address ip.
func (f *fakeFW) covers(ip string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	a := netip.MustParseAddr(ip)
	for p := range f.elems {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

func (f *fakeFW) AllElements() ([]firewall.Element, error) { return f.Elements() }

func (f *fakeFW) Unblock(ps []netip.Prefix) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.unblocks++
	if f.failUnblock != nil {
		return f.failUnblock
	}
	for _, p := range ps {
		delete(f.elems, p)
	}
	return nil
}

func (f *fakeFW) SetAllow(ps []netip.Prefix) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.allow = ps
	return nil
}

func (f *fakeFW) Lockdown(l firewall.Lockdown) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.lockdown = &l
	return nil
}

func (f *fakeFW) Release() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.lockdown = nil
	return nil
}

func (f *fakeFW) Elements() ([]firewall.Element, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []firewall.Element
	for p, t := range f.elems {
		out = append(out, firewall.Element{Prefix: p, Timeout: t})
	}
	return out, nil
}

func (f *fakeFW) Present() (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.present, nil
}

func (f *fakeFW) Remove() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.present = false
	clear(f.elems)
	return nil
}

// drop simulates `nft flush ruleset`.
func (f *fakeFW) drop() { _ = f.Remove() }

// state renders the kernel view as sorted golden lines.
func (f *fakeFW) state() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var lines []string
	for p, t := range f.elems {
		lines = append(lines, fmt.Sprintf("block %s timeout=%s", p, t.Round(time.Second)))
	}
	slices.Sort(lines)
	return strings.Join(lines, "\n")
}

// clock is a settable fake clock.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time      { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) Add(d time.Duration) { c.mu.Lock(); c.t = c.t.Add(d); c.mu.Unlock() }

func testConfig(t *testing.T) Config {
	cfg := DefaultConfig()
	cfg.StateDir = t.TempDir()
	cfg.Socket = cfg.StateDir + "/s.sock"
	cfg.Allowlist = []string{"198.51.100.10"}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	return cfg
}

func newTestDaemon(t *testing.T, cfg Config, fw *fakeFW, clk *clock) *Daemon {
	t.Helper()
	d, err := New(cfg, Options{Firewall: fw, Now: clk.Now, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		HostAddrs: func() ([]netip.Addr, error) { return []netip.Addr{netip.MustParseAddr("192.0.2.1")}, nil }})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	if err := d.heal.Reconcile("start"); err != nil {
		t.Fatal(err)
	}
	return d
}

// statusOf is d.Status for tests: the decision path is never busy there.
func statusOf(t testing.TB, d *Daemon) api.Status {
	t.Helper()
	st, err := d.Status(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// blocksOf is the decision path's list of active blocks, for tests.
func blocksOf(t testing.TB, d *Daemon) []api.BlockInfo {
	t.Helper()
	b, err := d.path.Blocks(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return b
}
