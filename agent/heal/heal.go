// Package heal is reconcile and self-heal: it keeps the kernel's table in
// line with the decision path. At start and whenever the table is found
// missing or damaged it rebuilds it and has the path re-assert every
// block; after someone else's nftables commit it has the path re-assert
// (rate-limited); it sweeps elements the store does not know, schedules
// the pruning of expired blocks and follows the host's addresses. It
// never changes a block itself: it asks the decision path (Path).
package heal

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/parryhq/parry/agent/api"
	"github.com/parryhq/parry/firewall"
)

// Table is the table lifecycle self-heal needs from the kernel.
type Table interface {
	Ensure() error
	Present() (bool, error)
	Elements() ([]firewall.Element, error)
	Remove() error
}

// Watcher is implemented by firewalls that report changes to their table.
type Watcher interface {
	Watch(ctx context.Context, changed, foreign func()) error
}

// ElementReader reads the kernel's view of the block sets.
type ElementReader interface {
	Elements() ([]firewall.Element, error)
}

// Path is what self-heal asks of the decision path.
type Path interface {
	// Reassert puts the allowlist, every active block and an active
	// lockdown back into the kernel.
	Reassert() (blocks int, lockdown bool, err error)
	// RemoveUnknown removes the elements of have the store does not hold.
	RemoveUnknown(have []firewall.Element) ([]netip.Prefix, error)
	// Prune drops the expired blocks from the store.
	Prune()
	// RefreshOwn re-reads the host's addresses for the guard.
	RefreshOwn()
}

// AddrEvents tells when the host's addresses change (agent.NetlinkAddrs).
type AddrEvents interface {
	Run(ctx context.Context, changed func()) error
}

var (
	_ Table   = (*firewall.NFT)(nil)
	_ Watcher = (*firewall.NFT)(nil) // else self-heal silently falls back to the 10 s presence poll
)

// Intervals of the maintenance loop.
const (
	tickEvery  = time.Second      // the loop's tick (watchdog, audit sync)
	pollEvery  = time.Second      // table presence check when the firewall cannot watch
	watchPoll  = 10 * time.Second // presence check as a backstop to Watch
	addrsEvery = 30 * time.Second // host address re-read as a safety net to AddrEvents
)

// Options are a Healer's dependencies.
type Options struct {
	Table Table
	Path  Path
	// Audit appends an event to the audit log.
	Audit func(event string, fields map[string]any) error
	Log   *slog.Logger     // default slog.Default()
	Now   func() time.Time // default time.Now; all scheduling is measured with it
	// TableName names the table in log lines.
	TableName string
	// Sweeper opens a second, independent reader of the kernel's block
	// sets for the sweep of unknown elements after a start with the table
	// present. Dumping a 100k-element hash set takes seconds (the kernel
	// resumes its walk from the start for every netlink message), so it
	// runs after READY on its own connection and never stalls enforcement.
	// Nil: the sweep runs inline in Reconcile with the Table (tests).
	Sweeper func() (ElementReader, func(), error)
	// AddrEvents reports changes of the host's addresses; nil: the 30 s
	// re-read only.
	AddrEvents AddrEvents
	// PruneEvery and ReassertEvery read prune_interval and
	// reassert_interval of the config in force.
	PruneEvery, ReassertEvery func() time.Duration
	// Reasserted, if set, hears of each re-assertion that succeeded, with
	// its reason ("start", "table missing", "foreign_change"...): the
	// metrics. It must not call back into the healer.
	Reasserted func(reason string)
}

// Healer is reconcile and self-heal.
type Healer struct {
	o Options

	heal    chan struct{} // check the table now
	foreign chan struct{} // someone else committed to nftables; our elements may be gone
	bulk    atomic.Bool   // a large change just happened: return freed memory to the OS

	// work serializes the healer's kernel work (reconcile, re-assert,
	// sweep, uninstall); mu guards health and uninstalled and is never
	// held while calling out, so the decision path may report kernel
	// errors (KernelError) at any time.
	work        sync.Mutex
	mu          sync.Mutex
	health      api.Health
	uninstalled bool // the table was removed on request: no self-heal
}

// New returns a Healer; Run starts its loop.
func New(o Options) *Healer {
	if o.Log == nil {
		o.Log = slog.Default()
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return &Healer{o: o, heal: make(chan struct{}, 1), foreign: make(chan struct{}, 1)}
}

// Health is the table's health as last checked.
func (h *Healer) Health() api.Health {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.health
}

// KernelError notes a failed kernel write (the decision path's) and has
// the loop check the table. It never blocks.
func (h *Healer) KernelError(err error) {
	h.mu.Lock()
	h.health.LastError = err.Error()
	h.mu.Unlock()
	h.checkSoon()
}

// Bulk notes a large change: the loop returns freed memory to the OS on
// its next tick.
func (h *Healer) Bulk() { h.bulk.Store(true) }

func (h *Healer) checkSoon() {
	select {
	case h.heal <- struct{}{}:
	default:
	}
}

func (h *Healer) noteHealth(present bool, err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.health.Present, h.health.Checked = present, h.o.Now()
	if err != nil {
		h.health.LastError = err.Error()
	} else {
		h.health.LastError = ""
	}
}

func (h *Healer) isUninstalled() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.uninstalled
}

// Uninstall removes the table and stops self-heal for good (op
// uninstall_rules; the daemon stops next).
func (h *Healer) Uninstall() error {
	h.work.Lock()
	defer h.work.Unlock()
	err := h.o.Table.Remove()
	h.mu.Lock()
	h.uninstalled = err == nil
	h.mu.Unlock()
	return err
}

// Reconcile brings the kernel in line with the store: it creates the table
// if missing, removes set elements the store does not know (reported and
// audited), and has the path re-assert the allowlist, every active block
// with its remaining time, and an active lockdown.
func (h *Healer) Reconcile(reason string) error {
	h.work.Lock()
	defer h.work.Unlock()
	return h.reconcile(reason)
}

func (h *Healer) reasserted(reason string) {
	if h.o.Reasserted != nil {
		h.o.Reasserted(reason)
	}
}

func (h *Healer) reconcile(reason string) error {
	start := h.o.Now()
	wasPresent, err := h.o.Table.Present()
	if err != nil {
		wasPresent = false
	}
	if err := h.o.Table.Ensure(); err != nil {
		h.noteHealth(false, err)
		return fmt.Errorf("reconcile: ensure table: %w", err)
	}
	var unknown []netip.Prefix
	sweepLater := wasPresent && h.o.Sweeper != nil
	if wasPresent && !sweepLater {
		have, err := h.o.Table.Elements()
		if err != nil {
			return fmt.Errorf("reconcile: read elements: %w", err)
		}
		if unknown, err = h.o.Path.RemoveUnknown(have); err != nil {
			return fmt.Errorf("reconcile: %w", err)
		}
	}
	n, lock, err := h.o.Path.Reassert()
	if err != nil {
		h.noteHealth(false, err)
		return fmt.Errorf("reconcile: %w", err)
	}
	h.noteHealth(true, nil)
	h.reasserted(reason)
	f := map[string]any{"reason": reason, "table_was_present": wasPresent, "restored": n,
		"lockdown": lock, "took_ms": h.o.Now().Sub(start).Milliseconds()}
	if len(unknown) > 0 {
		f["removed_unknown"] = targetStrings(unknown)
		h.o.Log.Warn("reconcile removed set elements the store does not know", "count", len(unknown))
	}
	h.o.Audit("reconcile", f)
	if sweepLater {
		go h.sweep()
	}
	return nil
}

// reassertForeign puts the allowlist, every active block and an active
// lockdown back after someone else committed to nftables with our table's
// structure intact (`nft delete element`, `nft flush set`, or just another
// table's change: we cannot tell without reading every element). The
// maintenance loop rate-limits it to one per reassert_interval.
func (h *Healer) reassertForeign() {
	h.work.Lock()
	defer h.work.Unlock()
	if h.isUninstalled() {
		return
	}
	start := h.o.Now()
	n, lock, err := h.o.Path.Reassert()
	if err != nil {
		h.noteHealth(false, err)
		h.o.Log.Error("re-assert after a foreign nftables change failed", "err", err)
		h.checkSoon() // the structure may be gone since
		return
	}
	h.reasserted("foreign_change")
	took := h.o.Now().Sub(start).Milliseconds()
	h.o.Log.Info("re-asserted blocks after a foreign nftables change", "blocks", n, "lockdown", lock, "took_ms", took)
	h.o.Audit("reconcile", map[string]any{"reason": "foreign_change", "restored": n, "lockdown": lock, "took_ms": took})
}

// sweep reads the kernel's sets on a separate connection, then has the
// path remove the elements the store does not know, and audits them.
func (h *Healer) sweep() {
	start := h.o.Now()
	r, closeFn, err := h.o.Sweeper()
	if err != nil {
		h.o.Log.Warn("sweep of unknown elements: cannot open a reader", "err", err)
		return
	}
	have, err := r.Elements()
	closeFn()
	if err != nil {
		h.o.Log.Warn("sweep of unknown elements: read failed", "err", err)
		return
	}
	h.bulk.Store(true) // the dump's buffers go back to the OS on the next tick
	h.work.Lock()
	defer h.work.Unlock()
	if h.isUninstalled() {
		return
	}
	unknown, err := h.o.Path.RemoveUnknown(have)
	if err != nil {
		h.o.Log.Error("sweep of unknown elements", "err", err)
		return
	}
	f := map[string]any{"reason": "sweep", "checked": len(have), "took_ms": h.o.Now().Sub(start).Milliseconds()}
	if len(unknown) > 0 {
		f["removed_unknown"] = targetStrings(unknown)
		h.o.Log.Warn("removed set elements the store does not know", "count", len(unknown))
	}
	h.o.Audit("reconcile", f)
}

// CheckTable heals the table if it is missing. Cheap: one Present call.
func (h *Healer) CheckTable() {
	h.work.Lock()
	defer h.work.Unlock()
	if h.isUninstalled() {
		return
	}
	ok, err := h.o.Table.Present()
	if err == nil && ok {
		h.noteHealth(true, nil)
		return
	}
	h.noteHealth(false, err)
	h.o.Log.Warn("nftables table missing or damaged; rebuilding", "table", h.o.TableName, "err", err)
	if err := h.reconcile("table missing"); err != nil {
		h.o.Log.Error("self-heal failed; retrying", "err", err)
		return
	}
	h.mu.Lock()
	h.health.Heals++
	h.health.LastHeal = h.o.Now()
	h.mu.Unlock()
}

// refreshOwn has the path re-read the host's addresses, unless the table
// was removed.
func (h *Healer) refreshOwn() {
	if !h.isUninstalled() {
		h.o.Path.RefreshOwn()
	}
}

// Run runs the maintenance loop until ctx ends: self-heal (on firewall
// change events and a presence check), pruning of expired blocks and the
// host address re-read. tick (may be nil) runs on every tick of the loop
// after its own work (the audit log's fsync, the watchdog ping): it only
// goes out while the loop is doing its work. Every interval is measured
// with Options.Now.
func (h *Healer) Run(ctx context.Context, tick func()) {
	poll := pollEvery
	if w, ok := h.o.Table.(Watcher); ok {
		poll = watchPoll // Watch reports damage within its interval; this is a backstop
		go func() {
			err := w.Watch(ctx, h.checkSoon, func() {
				select {
				case h.foreign <- struct{}{}:
				default:
				}
			})
			if err != nil && ctx.Err() == nil {
				h.o.Log.Warn("firewall watch ended; relying on the 1 s presence check", "err", err)
			}
		}()
	}
	ticker := time.NewTicker(tickEvery)
	defer ticker.Stop()
	now := h.o.Now()
	lastPrune, lastAddrs, lastPoll := now, now, now
	var lastReassert time.Time // zero: the first foreign change is handled at once
	foreignPending := false
	reassert := func() {
		if !foreignPending || h.o.Now().Sub(lastReassert) < h.o.ReassertEvery() {
			return // later foreign changes wait for the interval, coalesced
		}
		foreignPending = false
		lastReassert = h.o.Now()
		h.reassertForeign()
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-h.heal:
			h.CheckTable()
		case <-h.foreign:
			foreignPending = true
			reassert()
		case <-ticker.C:
			if h.o.Now().Sub(lastPoll) >= poll {
				h.CheckTable()
				lastPoll = h.o.Now()
			}
			reassert()
			if h.o.Now().Sub(lastPrune) >= h.o.PruneEvery() {
				h.o.Path.Prune()
				lastPrune = h.o.Now()
			}
			if h.o.Now().Sub(lastAddrs) >= addrsEvery {
				h.refreshOwn()
				lastAddrs = h.o.Now()
			}
			if h.bulk.Swap(false) {
				// Twice: what a sync.Pool holds (bbolt's pages of a large
				// commit: 70 MiB after 1,000,000 blocks) survives one GC
				// in its victim cache and goes only at the second.
				debug.FreeOSMemory()
				debug.FreeOSMemory()
			}
			if tick != nil {
				tick()
			}
		}
	}
}

// FollowAddrs runs the address watcher and has the path refresh the guard
// on every change it reports, until ctx ends. Bursts coalesce: one refresh
// re-reads every address. If the watcher fails, the 30 s re-read of the
// maintenance loop remains.
func (h *Healer) FollowAddrs(ctx context.Context) {
	if h.o.AddrEvents == nil {
		return
	}
	kick := make(chan struct{}, 1)
	done := make(chan struct{})
	go func() {
		defer close(done)
		err := h.o.AddrEvents.Run(ctx, func() {
			select {
			case kick <- struct{}{}:
			default:
			}
		})
		if err != nil && ctx.Err() == nil {
			h.o.Log.Warn("host address watch ended; the guard now learns new addresses from the 30 s poll only", "err", err)
		}
	}()
	for {
		select {
		case <-ctx.Done():
			<-done
			return
		case <-done:
			return
		case <-kick:
			h.refreshOwn()
		}
	}
}

func targetStrings(ps []netip.Prefix) []string {
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = api.FormatTarget(p)
	}
	return s
}
