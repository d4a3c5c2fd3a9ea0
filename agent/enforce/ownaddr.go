package enforce

import (
	"fmt"
	"net/netip"
	"slices"

	"github.com/parryhq/parry/agent/api"
	"github.com/parryhq/parry/agent/store"
)

// RefreshOwn re-reads the host's own addresses for the guard and takes a
// new one out of the active blocks that cover it. The address watcher
// calls it on every change, the maintenance loop every 30 s as a safety net.
func (dp *Path) RefreshOwn() {
	dp.mu.Lock()
	defer dp.mu.Unlock()
	dp.refreshOwn("refresh")
}

// UnblockOwn takes every current own address out of the active blocks (at
// start: an address may have appeared while parryd was down).
func (dp *Path) UnblockOwn() {
	dp.mu.Lock()
	defer dp.mu.Unlock()
	dp.unblockOwn(dp.guard.Own)
}

// refreshOwn re-reads the host's addresses into the guard and, for each
// address that is new, takes it out of the active blocks that cover it.
// Caller holds dp.mu.
func (dp *Path) refreshOwn(why string) {
	old := dp.guard.Own
	dp.refreshGuard()
	var added, removed []netip.Addr
	for _, a := range dp.guard.Own {
		if !slices.Contains(old, a) {
			added = append(added, a)
		}
	}
	for _, a := range old {
		if !slices.Contains(dp.guard.Own, a) {
			removed = append(removed, a)
		}
	}
	if len(added) == 0 && len(removed) == 0 {
		return
	}
	dp.log.Info("host addresses changed", "why", why, "added", added, "removed", removed)
	dp.unblockOwn(added)
}

// unblockOwn takes the addresses in own out of every active block that
// covers one: a block of just that address is removed, a CIDR is replaced
// by the prefixes that cover the rest of it (same decision, same expiry).
// Each is audited as own_address and logged. Caller holds dp.mu.
func (dp *Path) unblockOwn(own []netip.Addr) {
	if len(own) == 0 {
		return
	}
	nowMs := dp.now().UnixMilli()
	hit := map[netip.Prefix]netip.Addr{}
	for _, a := range own {
		f := fam(netip.PrefixFrom(a, a.BitLen()))
		for l := a.BitLen(); l >= 0; l-- {
			if dp.blocks.lens[f][l] == 0 {
				continue
			}
			p, _ := a.Prefix(l)
			if e, ok := dp.blocks.get(p); ok && !e.expired(nowMs) {
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
		if err := dp.carveBlock(p, dp.guard.Own, nowMs); err != nil {
			dp.log.Error("cannot take an own address out of a block; the guard refuses it from now on, the block stays until fixed",
				"target", api.FormatTarget(p), "address", hit[p], "err", err)
			dp.rec.Audit("own_address", map[string]any{"target": api.FormatTarget(p), "address": hit[p].String(), "ok": false, "error": err.Error()})
		}
	}
}

// carveBlock replaces the block p by the pieces of p that hold none of
// own: store first, then the kernel (the old element out, the pieces in);
// a kernel failure puts the store back. Caller holds dp.mu.
func (dp *Path) carveBlock(p netip.Prefix, own []netip.Addr, nowMs int64) error {
	e, _ := dp.blocks.get(p)
	pieces := carve(p, own)
	var ch, undo store.Change
	ch.DelBlocks = []netip.Prefix{p}
	undo.PutBlocks = []store.Block{{Prefix: p, Created: e.created, Until: e.until, Decision: e.dec}}
	for _, q := range pieces {
		if old, ok := dp.blocks.get(q); ok && !old.expired(nowMs) {
			continue // a record of its own already: it stays as it is
		}
		ch.PutBlocks = append(ch.PutBlocks, store.Block{Prefix: q, Created: e.created, Until: e.until, Decision: e.dec})
		undo.DelBlocks = append(undo.DelBlocks, q)
	}
	dec := dp.blocks.decision(e.dec)
	if len(pieces) == 0 {
		if orphans := dp.blocks.orphans([]netip.Prefix{p}); len(orphans) > 0 {
			ch.DelDecisions = orphans
			undo.PutDecisions = []store.Decision{dec}
		}
	}
	fw, back := dp.blocks.kernelDiff(ch, nowMs)
	if err := dp.store.Commit(ch); err != nil {
		return err
	}
	if err := dp.applyKernel(fw); err != nil {
		dp.restoreKernel(back)
		if uerr := dp.store.Commit(undo); uerr != nil {
			dp.log.Error("store undo after firewall failure failed", "err", uerr)
		}
		dp.kernelError(err)
		return fmt.Errorf("firewall: %w", err)
	}
	for _, b := range ch.PutBlocks { // before del: the decision keeps its text
		dp.blocks.put(b.Prefix, e)
	}
	dp.blocks.del(p)
	dp.blocks.settle()
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
	dp.log.Warn("a block covered a new own address of this host: taken out of it", "target", api.FormatTarget(p), "action", action,
		"addresses", in, "kept", len(pieces))
	dp.rec.Audit("own_address", f)
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
