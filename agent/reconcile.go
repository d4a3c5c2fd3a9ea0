package agent

import (
	"context"
	"fmt"
	"net/netip"
	"runtime/debug"
	"time"

	"github.com/parryhq/parry/agent/store"
	"github.com/parryhq/parry/firewall"
)

// Reconcile brings the kernel in line with the store: it creates the table
// if missing, sets the allowlist, removes set elements the store does not
// know (reported and audited), re-asserts every active block with its
// remaining time in one batch, and restores an active lockdown.
func (d *Daemon) Reconcile(reason string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.reconcile(reason)
}

func (d *Daemon) reconcile(reason string) error {
	start := d.now()
	wasPresent, err := d.fw.Present()
	if err != nil {
		wasPresent = false
	}
	if err := d.fw.Ensure(); err != nil {
		d.noteHealth(false, err)
		return fmt.Errorf("reconcile: ensure table: %w", err)
	}
	if err := d.fw.SetAllow(d.cfg.AllowPrefixes()); err != nil {
		d.noteHealth(false, err)
		return fmt.Errorf("reconcile: allowlist: %w", err)
	}
	nowMs := d.now().UnixMilli()
	var unknown []netip.Prefix
	sweepLater := false
	if wasPresent && d.sweeper != nil {
		sweepLater = true
	} else if wasPresent {
		have, err := d.fw.Elements()
		if err != nil {
			return fmt.Errorf("reconcile: read elements: %w", err)
		}
		if unknown, err = d.removeUnknown(have, nowMs); err != nil {
			return fmt.Errorf("reconcile: %w", err)
		}
	}
	n, lock, err := d.assert(nowMs)
	if err != nil {
		return fmt.Errorf("reconcile: %w", err)
	}
	d.noteHealth(true, nil)
	f := map[string]any{"reason": reason, "table_was_present": wasPresent, "restored": n,
		"lockdown": lock, "took_ms": d.now().Sub(start).Milliseconds()}
	if len(unknown) > 0 {
		f["removed_unknown"] = targetStrings(unknown)
		d.log.Warn("reconcile removed set elements the store does not know", "count", len(unknown))
	}
	d.Audit("reconcile", f)
	if sweepLater {
		go d.sweep()
	}
	if n >= bulkTargets {
		d.bulk.Store(true)
	}
	return nil
}

// assert re-asserts every active block with its remaining time in one
// batch, and an active lockdown. Idempotent. It returns the number of
// blocks and whether a lockdown was restored. Caller holds d.mu.
func (d *Daemon) assert(nowMs int64) (int, bool, error) {
	elems := make([]firewall.Element, 0, d.blocks.len())
	for p, e := range d.blocks.m {
		if e.expired(nowMs) {
			continue
		}
		var t time.Duration
		if e.until != 0 {
			t = time.Duration(e.until-nowMs) * time.Millisecond
		}
		elems = append(elems, firewall.Element{Prefix: p, Timeout: t})
	}
	if err := d.fw.Block(elems); err != nil {
		d.noteHealth(false, err)
		return 0, false, fmt.Errorf("re-assert %d blocks: %w", len(elems), err)
	}
	lock := d.lockdownState()
	if lock.Active {
		l := d.lockdown
		if err := d.fw.Lockdown(firewall.Lockdown{Allow: l.Allow, Isolate: l.Isolate, Timeout: l.Until.Sub(d.now())}); err != nil {
			return 0, false, fmt.Errorf("restore lockdown: %w", err)
		}
	}
	return len(elems), lock.Active, nil
}

// reassertForeign puts the allowlist, every active block and an active
// lockdown back after someone else committed to nftables with our table's
// structure intact (`nft delete element`, `nft flush set`, or just another
// table's change: we cannot tell without reading every element). The
// maintenance loop rate-limits it to one per reassert_interval.
func (d *Daemon) reassertForeign() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.uninstalled {
		return
	}
	start := d.now()
	err := d.fw.SetAllow(d.cfg.AllowPrefixes())
	n, lock := 0, false
	if err == nil {
		n, lock, err = d.assert(start.UnixMilli())
	}
	if err != nil {
		d.log.Error("re-assert after a foreign nftables change failed", "err", err)
		select { // the structure may be gone since: let the healer check
		case d.heal <- struct{}{}:
		default:
		}
		return
	}
	took := d.now().Sub(start).Milliseconds()
	d.log.Info("re-asserted blocks after a foreign nftables change", "blocks", n, "lockdown", lock, "took_ms", took)
	d.Audit("reconcile", map[string]any{"reason": "foreign_change", "restored": n, "lockdown": lock, "took_ms": took})
	if n >= bulkTargets {
		d.bulk.Store(true)
	}
}

// removeUnknown removes the elements of have that the store does not hold
// (or holds as expired). Caller holds d.mu.
func (d *Daemon) removeUnknown(have []firewall.Element, nowMs int64) ([]netip.Prefix, error) {
	var unknown []netip.Prefix
	for _, e := range have {
		if be, ok := d.blocks.get(e.Prefix); !ok || be.expired(nowMs) {
			unknown = append(unknown, e.Prefix)
		}
	}
	if len(unknown) > 0 {
		if err := d.fw.Unblock(unknown); err != nil {
			return nil, fmt.Errorf("remove unknown elements: %w", err)
		}
	}
	return unknown, nil
}

// sweep reads the kernel's sets on a separate connection, then removes the
// elements the store does not know and audits them.
func (d *Daemon) sweep() {
	start := time.Now()
	r, closeFn, err := d.sweeper()
	if err != nil {
		d.log.Warn("sweep of unknown elements: cannot open a reader", "err", err)
		return
	}
	have, err := r.Elements()
	closeFn()
	if err != nil {
		d.log.Warn("sweep of unknown elements: read failed", "err", err)
		return
	}
	d.bulk.Store(true) // the dump's buffers go back to the OS on the next tick
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.uninstalled {
		return
	}
	unknown, err := d.removeUnknown(have, d.now().UnixMilli())
	if err != nil {
		d.log.Error("sweep of unknown elements", "err", err)
		return
	}
	f := map[string]any{"reason": "sweep", "checked": len(have), "took_ms": time.Since(start).Milliseconds()}
	if len(unknown) > 0 {
		f["removed_unknown"] = targetStrings(unknown)
		d.log.Warn("removed set elements the store does not know", "count", len(unknown))
	}
	d.Audit("reconcile", f)
}

func (d *Daemon) noteHealth(present bool, err error) {
	d.health.Present, d.health.Checked = present, d.now()
	if err != nil {
		d.health.LastError = err.Error()
	} else {
		d.health.LastError = ""
	}
}

// prune drops expired blocks from the store and the index (the kernel has
// already dropped them) and audits one `expire` event.
func (d *Daemon) prune() {
	d.mu.Lock()
	defer d.mu.Unlock()
	nowMs := d.now().UnixMilli()
	expired := d.blocks.expiredBlocks(nowMs)
	if len(expired) == 0 {
		return
	}
	ch := store.Change{DelBlocks: expired}
	lose := map[uint64]int{}
	for _, p := range expired {
		e, _ := d.blocks.get(p)
		lose[e.dec]++
	}
	for seq, n := range lose {
		if m := d.blocks.decs[seq]; m == nil || m.refs <= n {
			ch.DelDecisions = append(ch.DelDecisions, seq)
		}
	}
	if err := d.store.Commit(ch); err != nil {
		d.log.Error("prune expired blocks", "err", err)
		return
	}
	for _, p := range expired {
		d.blocks.del(p)
	}
	d.Audit("expire", map[string]any{"targets": targetStrings(expired), "count": len(expired)})
}

// checkTable heals the table if it is missing. Cheap: one Present call.
func (d *Daemon) checkTable() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.uninstalled {
		return
	}
	ok, err := d.fw.Present()
	if err == nil && ok {
		d.noteHealth(true, nil)
		return
	}
	d.noteHealth(false, err)
	d.log.Warn("nftables table missing or damaged; rebuilding", "table", d.cfg.Table, "err", err)
	if err := d.reconcile("table missing"); err != nil {
		d.log.Error("self-heal failed; retrying", "err", err)
		return
	}
	d.health.Heals++
	d.health.LastHeal = d.now()
}

// maintain runs until ctx ends: self-heal (on firewall change events and a
// 1 s presence check), pruning of expired blocks, and the watchdog ping,
// which therefore only goes out while this loop is doing its work.
func (d *Daemon) maintain(ctx context.Context, ping func()) {
	poll := time.Second // presence check when the firewall cannot watch
	if w, ok := d.fw.(watcher); ok {
		poll = 10 * time.Second // Watch reports damage within its interval; this is a backstop
		go func() {
			err := w.Watch(ctx, func() {
				select {
				case d.heal <- struct{}{}:
				default:
				}
			}, func() {
				select {
				case d.foreign <- struct{}{}:
				default:
				}
			})
			if err != nil && ctx.Err() == nil {
				d.log.Warn("firewall watch ended; relying on the 1 s presence check", "err", err)
			}
		}()
	}
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	lastPrune, lastAddrs, lastPoll := time.Now(), time.Now(), time.Now()
	var lastReassert time.Time // zero: the first foreign change is handled at once
	foreignPending := false
	reassert := func() {
		if !foreignPending || time.Since(lastReassert) < d.Config().Reassert.D() {
			return // later foreign changes wait for the interval, coalesced
		}
		foreignPending = false
		lastReassert = time.Now()
		d.reassertForeign()
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-d.heal:
			d.checkTable()
		case <-d.foreign:
			foreignPending = true
			reassert()
		case <-tick.C:
			if time.Since(lastPoll) >= poll {
				d.checkTable()
				lastPoll = time.Now()
			}
			reassert()
			if time.Since(lastPrune) >= d.Config().Prune.D() {
				d.prune()
				lastPrune = time.Now()
			}
			if time.Since(lastAddrs) >= 30*time.Second {
				d.RefreshHostAddrs()
				lastAddrs = time.Now()
			}
			if d.bulk.Swap(false) {
				debug.FreeOSMemory()
			}
			if err := d.audit.Sync(); err != nil {
				d.log.Error("audit sync", "err", err)
			}
			d.retryRecovery()
			if ping != nil {
				ping()
			}
		}
	}
}
