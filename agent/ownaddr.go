package agent

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"time"

	"github.com/parryhq/parry/agent/api"
	"github.com/parryhq/parry/agent/store"
	"github.com/parryhq/parry/firewall"
)

// followAddrs runs the address watcher and refreshes the guard on every
// change it reports, until ctx ends. Bursts coalesce: one refresh re-reads
// every address. If the watcher fails, the 30 s poll of the maintenance
// loop remains.
func (d *Daemon) followAddrs(ctx context.Context) {
	kick := make(chan struct{}, 1)
	done := make(chan struct{})
	go func() {
		defer close(done)
		err := d.addrEvents.Run(ctx, func() {
			select {
			case kick <- struct{}{}:
			default:
			}
		})
		if err != nil && ctx.Err() == nil {
			d.log.Warn("host address watch ended; the guard now learns new addresses from the 30 s poll only", "err", err)
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
			d.RefreshHostAddrs()
		}
	}
}

// refreshOwn re-reads the host's addresses into the guard and, for each
// address that is new, takes it out of the active blocks that cover it.
// Caller holds d.mu.
func (d *Daemon) refreshOwn(why string) {
	old := d.guard.Own
	d.refreshGuard()
	var added, removed []netip.Addr
	for _, a := range d.guard.Own {
		if !slices.Contains(old, a) {
			added = append(added, a)
		}
	}
	for _, a := range old {
		if !slices.Contains(d.guard.Own, a) {
			removed = append(removed, a)
		}
	}
	if len(added) == 0 && len(removed) == 0 {
		return
	}
	d.log.Info("host addresses changed", "why", why, "added", added, "removed", removed)
	d.unblockOwn(added)
}

// unblockOwn takes the addresses in own out of every active block that
// covers one: a block of just that address is removed, a CIDR is replaced
// by the prefixes that cover the rest of it (same decision, same expiry).
// Each is audited as own_address and logged. Caller holds d.mu.
func (d *Daemon) unblockOwn(own []netip.Addr) {
	if len(own) == 0 || d.uninstalled {
		return
	}
	nowMs := d.now().UnixMilli()
	hit := map[netip.Prefix]netip.Addr{}
	for _, a := range own {
		f := fam(netip.PrefixFrom(a, a.BitLen()))
		for l := a.BitLen(); l >= 0; l-- {
			if d.blocks.lens[f][l] == 0 {
				continue
			}
			p, _ := a.Prefix(l)
			if e, ok := d.blocks.get(p); ok && !e.expired(nowMs) {
				hit[p] = a
			}
		}
	}
	keys := make([]netip.Prefix, 0, len(hit))
	for p := range hit {
		keys = append(keys, p)
	}
	slices.SortFunc(keys, func(a, b netip.Prefix) int { return a.Addr().Compare(b.Addr()) })
	for _, p := range keys {
		if err := d.carveBlock(p, d.guard.Own, nowMs); err != nil {
			d.log.Error("cannot take an own address out of a block; the guard refuses it from now on, the block stays until fixed",
				"target", api.FormatTarget(p), "address", hit[p], "err", err)
			d.Audit("own_address", map[string]any{"target": api.FormatTarget(p), "address": hit[p].String(), "ok": false, "error": err.Error()})
		}
	}
}

// carveBlock replaces the block p by the pieces of p that hold none of
// own: store first, then the kernel (the old element out, the pieces in);
// a kernel failure puts the store back. Caller holds d.mu.
func (d *Daemon) carveBlock(p netip.Prefix, own []netip.Addr, nowMs int64) error {
	e, _ := d.blocks.get(p)
	pieces := carve(p, own)
	var ch, undo store.Change
	ch.DelBlocks = []netip.Prefix{p}
	undo.PutBlocks = []store.Block{{Prefix: p, Created: e.created, Until: e.until, Decision: e.dec}}
	var timeout time.Duration
	if e.until != 0 {
		timeout = time.Duration(e.until-nowMs) * time.Millisecond
	}
	elems := make([]firewall.Element, 0, len(pieces))
	for _, q := range pieces {
		ch.PutBlocks = append(ch.PutBlocks, store.Block{Prefix: q, Created: e.created, Until: e.until, Decision: e.dec})
		undo.DelBlocks = append(undo.DelBlocks, q)
		elems = append(elems, firewall.Element{Prefix: q, Timeout: timeout})
	}
	dec := d.blocks.decision(e.dec)
	if m := d.blocks.decs[e.dec]; len(pieces) == 0 && (m == nil || m.refs <= 1) {
		ch.DelDecisions = []uint64{e.dec}
		undo.PutDecisions = []store.Decision{dec}
	}
	if err := d.store.Commit(ch); err != nil {
		return err
	}
	err := d.fw.Unblock([]netip.Prefix{p})
	if err == nil && len(elems) > 0 {
		if err = d.fw.Block(elems); err != nil {
			err = fmt.Errorf("%w (the old block is out of the kernel; the next reconcile puts the store's blocks back)", err)
		}
	}
	if err != nil {
		if uerr := d.store.Commit(undo); uerr != nil {
			d.log.Error("store undo after firewall failure failed", "err", uerr)
		}
		d.noteFirewallError(err)
		return fmt.Errorf("firewall: %w", err)
	}
	for _, q := range pieces { // before del: the decision keeps its text
		d.blocks.put(q, e)
	}
	d.blocks.del(p)
	action := "unblocked"
	if len(pieces) > 0 {
		action = "carved"
	}
	f := map[string]any{"ok": true, "target": api.FormatTarget(p), "action": action, "kept": len(pieces),
		"reason":      "the host now has an address inside this block; parry never blocks its own addresses",
		"decision_id": dec.ID}
	var in []string
	for _, a := range own {
		if p.Contains(a) {
			in = append(in, a.String())
		}
	}
	f["addresses"] = in
	if len(pieces) > 0 {
		f["pieces"] = targetStrings(pieces)
	}
	d.log.Warn("a block covered a new own address of this host: taken out of it", "target", api.FormatTarget(p), "action", action,
		"addresses", in, "kept", len(pieces))
	d.Audit("own_address", f)
	return nil
}

// carve returns the prefixes that cover p except the addresses in own, as
// few as possible (at most one per bit of host part for each address).
func carve(p netip.Prefix, own []netip.Addr) []netip.Prefix {
	p = p.Masked()
	var inside []netip.Addr
	for _, a := range own {
		if p.Contains(a) {
			inside = append(inside, a)
		}
	}
	if len(inside) == 0 {
		return []netip.Prefix{p}
	}
	if p.Bits() == p.Addr().BitLen() {
		return nil
	}
	lo := netip.PrefixFrom(p.Addr(), p.Bits()+1)
	hi := netip.PrefixFrom(setBit(p.Addr(), p.Bits()), p.Bits()+1)
	return append(carve(lo, inside), carve(hi, inside)...)
}

// setBit returns a with bit i (0 = most significant) set.
func setBit(a netip.Addr, i int) netip.Addr {
	if a.Is4() {
		b := a.As4()
		b[i/8] |= 0x80 >> (i % 8)
		return netip.AddrFrom4(b)
	}
	b := a.As16()
	b[i/8] |= 0x80 >> (i % 8)
	return netip.AddrFrom16(b)
}
