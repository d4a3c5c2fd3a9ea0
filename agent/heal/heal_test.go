package heal

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/netip"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/parryhq/parry/firewall"
)

// fakeTable is the kernel's table: present or not, and what was asked.
type fakeTable struct {
	mu       sync.Mutex
	present  bool
	ensures  int
	removed  bool
	elements []firewall.Element
}

func (f *fakeTable) Ensure() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.present = true
	f.ensures++
	return nil
}

func (f *fakeTable) Present() (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.present, nil
}

func (f *fakeTable) Elements() ([]firewall.Element, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.elements, nil
}

func (f *fakeTable) Remove() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.present, f.removed = false, true
	return nil
}

func (f *fakeTable) drop() { f.mu.Lock(); f.present = false; f.mu.Unlock() }

// watchTable is a fakeTable that reports changes: the test calls foreign.
type watchTable struct {
	*fakeTable
	foreign chan func()
}

func (w *watchTable) Watch(ctx context.Context, changed, foreign func()) error {
	w.foreign <- foreign
	<-ctx.Done()
	return nil
}

// fakePath counts what self-heal asked of the decision path.
type fakePath struct {
	mu                         sync.Mutex
	reasserts, prunes, refresh int
	removed                    []netip.Prefix
	failReassert               error
}

func (p *fakePath) Reassert() (int, bool, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.reasserts++
	return 3, false, p.failReassert
}

func (p *fakePath) RemoveUnknown(have []firewall.Element) ([]netip.Prefix, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []netip.Prefix
	for _, e := range have {
		out = append(out, e.Prefix)
	}
	p.removed = append(p.removed, out...)
	return out, nil
}

func (p *fakePath) Prune()      { p.mu.Lock(); p.prunes++; p.mu.Unlock() }
func (p *fakePath) RefreshOwn() { p.mu.Lock(); p.refresh++; p.mu.Unlock() }

func (p *fakePath) counts() (reasserts, prunes, refresh int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.reasserts, p.prunes, p.refresh
}

// audits records the audit events by reason (reconcile) or name.
type audits struct {
	mu     sync.Mutex
	events []string
}

func (a *audits) add(event string, f map[string]any) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if r, ok := f["reason"].(string); ok {
		event += ":" + r
	}
	a.events = append(a.events, event)
	return nil
}

func (a *audits) list() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]string(nil), a.events...)
}

func newHealer(tbl Table, p *fakePath, a *audits) *Healer {
	return New(Options{Table: tbl, Path: p, Audit: a.add, Log: slog.New(slog.NewTextHandler(io.Discard, nil)),
		TableName:     "t",
		PruneEvery:    func() time.Duration { return time.Minute },
		ReassertEvery: func() time.Duration { return 10 * time.Second }})
}

// run starts the loop in the bubble and returns its stop function, which
// waits for it to end, and the tick counter.
func run(t *testing.T, h *Healer) (stop func(), ticks func() int) {
	ctx, cancel := context.WithCancel(context.Background())
	var mu sync.Mutex
	n := 0
	done := make(chan struct{})
	go func() {
		defer close(done)
		h.Run(ctx, func() { mu.Lock(); n++; mu.Unlock() })
	}()
	return func() { cancel(); <-done }, func() int { mu.Lock(); defer mu.Unlock(); return n }
}

// The loop's schedule, on the fake clock of a bubble: a tick every second,
// a prune every prune_interval, a host address re-read every 30 s.
func TestRunSchedule(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		tbl, p, a := &fakeTable{present: true}, &fakePath{}, &audits{}
		h := newHealer(tbl, p, a)
		stop, ticks := run(t, h)
		defer stop()

		time.Sleep(59*time.Second + time.Millisecond)
		synctest.Wait()
		if _, prunes, refresh := p.counts(); prunes != 0 || refresh != 1 || ticks() != 59 {
			t.Fatalf("after 59 s: %d prunes, %d address re-reads, %d ticks; want 0, 1, 59", prunes, refresh, ticks())
		}
		time.Sleep(time.Second)
		synctest.Wait()
		if _, prunes, refresh := p.counts(); prunes != 1 || refresh != 2 || ticks() != 60 {
			t.Fatalf("after 60 s: %d prunes, %d address re-reads, %d ticks; want 1, 2, 60", prunes, refresh, ticks())
		}
		if tbl.ensures != 0 {
			t.Errorf("table present all along, but ensured %d times", tbl.ensures)
		}
	})
}

// Without a watcher the table is checked every second; a missing one is
// rebuilt and the path re-asserts into it, counted as a heal.
func TestRunHealsMissingTable(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		tbl, p, a := &fakeTable{present: true}, &fakePath{}, &audits{}
		h := newHealer(tbl, p, a)
		stop, _ := run(t, h)
		defer stop()

		time.Sleep(1500 * time.Millisecond)
		synctest.Wait()
		tbl.drop() // nft flush ruleset
		time.Sleep(time.Second)
		synctest.Wait()
		if r, _, _ := p.counts(); r != 1 || tbl.ensures != 1 {
			t.Fatalf("after the table went: %d re-asserts, %d ensures; want 1, 1", r, tbl.ensures)
		}
		hl := h.Health()
		if !hl.Present || hl.Heals != 1 || hl.LastHeal.IsZero() {
			t.Errorf("health %+v; want present, 1 heal", hl)
		}
		if ev := a.list(); len(ev) != 1 || ev[0] != "reconcile:table missing" {
			t.Errorf("audit %v; want one reconcile (table missing)", ev)
		}
	})
}

// A kernel error reported by the path has the table checked at once, not
// at the next poll.
func TestKernelErrorChecksTable(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		tbl := &watchTable{fakeTable: &fakeTable{present: true}, foreign: make(chan func(), 1)}
		p, a := &fakePath{}, &audits{}
		h := newHealer(tbl, p, a)
		stop, _ := run(t, h)
		defer stop()
		<-tbl.foreign

		tbl.drop()
		h.KernelError(errors.New("netlink: no such table"))
		synctest.Wait() // no time passes: the check is not the 10 s poll
		if r, _, _ := p.counts(); r != 1 || tbl.ensures != 1 {
			t.Fatalf("after a kernel error: %d re-asserts, %d ensures; want 1, 1", r, tbl.ensures)
		}
		if hl := h.Health(); hl.LastError != "" || !hl.Present {
			t.Errorf("health %+v; want present, error cleared by the heal", hl)
		}
	})
}

// Foreign nftables commits: the first is re-asserted at once, later ones
// within reassert_interval are coalesced into one at its end.
func TestForeignChangesCoalesce(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		tbl := &watchTable{fakeTable: &fakeTable{present: true}, foreign: make(chan func(), 1)}
		p, a := &fakePath{}, &audits{}
		h := newHealer(tbl, p, a)
		stop, _ := run(t, h)
		defer stop()
		foreign := <-tbl.foreign

		foreign()
		synctest.Wait()
		if r, _, _ := p.counts(); r != 1 {
			t.Fatalf("first foreign change: %d re-asserts, want 1 at once", r)
		}
		for range 5 {
			time.Sleep(time.Second)
			foreign()
		}
		synctest.Wait()
		if r, _, _ := p.counts(); r != 1 {
			t.Fatalf("5 more within the interval: %d re-asserts, want still 1", r)
		}
		time.Sleep(5 * time.Second)
		synctest.Wait()
		if r, _, _ := p.counts(); r != 2 {
			t.Fatalf("after the interval: %d re-asserts, want 2 (the later ones coalesced)", r)
		}
		time.Sleep(30 * time.Second)
		synctest.Wait()
		if r, _, _ := p.counts(); r != 2 {
			t.Fatalf("no change since: %d re-asserts, want 2", r)
		}
		want := []string{"reconcile:foreign_change", "reconcile:foreign_change"}
		if ev := a.list(); len(ev) != 2 || ev[0] != want[0] || ev[1] != want[1] {
			t.Errorf("audit %v; want %v", ev, want)
		}
	})
}

// After uninstall_rules nothing is healed or re-read any more.
func TestUninstallStopsSelfHeal(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		tbl, p, a := &fakeTable{present: true}, &fakePath{}, &audits{}
		h := newHealer(tbl, p, a)
		stop, _ := run(t, h)
		defer stop()
		if err := h.Uninstall(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Minute)
		synctest.Wait()
		if r, prunes, refresh := p.counts(); r != 0 || refresh != 0 || tbl.ensures != 0 || prunes != 1 {
			t.Errorf("after uninstall: %d re-asserts, %d address re-reads, %d ensures, %d prunes; want 0, 0, 0, 1", r, refresh, tbl.ensures, prunes)
		}
	})
}

// Reconcile at start with the table present removes what the store does
// not know (inline without a sweeper) and re-asserts.
func TestReconcileRemovesUnknown(t *testing.T) {
	tbl := &fakeTable{present: true, elements: []firewall.Element{{Prefix: netip.MustParsePrefix("203.0.113.9/32")}}}
	p, a := &fakePath{}, &audits{}
	h := newHealer(tbl, p, a)
	if err := h.Reconcile("start"); err != nil {
		t.Fatal(err)
	}
	if r, _, _ := p.counts(); r != 1 || len(p.removed) != 1 || tbl.ensures != 1 {
		t.Errorf("%d re-asserts, removed %v, %d ensures; want 1, [203.0.113.9/32], 1", r, p.removed, tbl.ensures)
	}
	p.failReassert = errors.New("kernel says no")
	if err := h.Reconcile("again"); err == nil || h.Health().Present {
		t.Errorf("failed re-assert: err %v, health %+v; want an error and not present", err, h.Health())
	}
}
