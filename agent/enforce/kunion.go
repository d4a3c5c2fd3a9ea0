package enforce

import (
	"net/netip"
	"time"

	"github.com/parryhq/parry/agent/store"
	"github.com/parryhq/parry/firewall"
	"github.com/parryhq/parry/firewall/union"
)

// The kernel holds the union of the logical blocks (docs/firewall.md,
// "Logical blocks and the kernel union"): every record of the index is a
// block of x.un, and the kernel gets the union's pieces, which never
// overlap in a set, carry the latest expiry of the blocks covering them and
// leave out the carve-outs. Planning a change asks the union what it makes
// of it (kernelDiff); committing applies that diff (Kernel.Apply), and the
// index, once the store and the audit log agree, follows (put, del), which
// keeps the union as the records are.

// blockUnion is the index's union: one logical block per record (the
// record's target is its identity), scoped by the kernel set it lives in.
type blockUnion = union.Union[netip.Prefix, firewall.Scope]

// kdiff is a kernel change: elements to delete, then elements to add or
// re-time (firewall.NFT.Apply).
type kdiff struct{ del, add []firewall.Element }

func (d kdiff) empty() bool { return len(d.del)+len(d.add) == 0 }

func (d kdiff) size() int { return len(d.del) + len(d.add) }

func ublock(p netip.Prefix, until int64) union.Block[firewall.Scope] {
	return union.Block[firewall.Scope]{Prefix: p, Expiry: until}
}

// unionPut and unionDel follow the index into its union. A prefix the
// union refuses (it cannot happen for a target the guard accepted) stays
// out of the kernel; the index still shows it.
func (x *index) unionPut(p netip.Prefix, until int64) {
	_ = x.un.Add(p, ublock(p, until))
}

func (x *index) unionDel(p netip.Prefix, until int64) {
	x.un.Remove(p, ublock(p, until))
}

// track starts the union's change tracking (its first Pieces call) if
// Reassert has not yet. Caller holds dp.mu.
func (x *index) track() {
	if !x.tracking {
		x.un.Pieces()
		x.tracking = true
	}
}

// settle forgets the union's pending changes: the kernel already has them
// (the index follows a committed change). Caller holds dp.mu.
func (x *index) settle() {
	if x.tracking {
		x.un.Changes()
	}
}

// kernelDiff is what the union makes of a store change on the index's
// blocks: the kernel diff that applies it and the one that undoes it. The
// union is left as it was (the index applies the change after the commit).
// Caller holds dp.mu.
func (x *index) kernelDiff(ch store.Change, nowMs int64) (fwd, back kdiff) {
	x.track()
	// The union replays the change (deletions, then puts: a feed lifts and
	// blocks in one change, and put wins for a prefix in both, as in the
	// store), and then goes back to the records as they were.
	type state struct {
		until      int64
		in         bool
		prevUntil  int64
		prevExists bool
	}
	st := make(map[netip.Prefix]*state, len(ch.DelBlocks)+len(ch.PutBlocks))
	get := func(p netip.Prefix) *state {
		s := st[p]
		if s == nil {
			e, ok := x.m.get(p)
			s = &state{until: e.until, in: ok, prevUntil: e.until, prevExists: ok}
			st[p] = s
		}
		return s
	}
	for _, p := range ch.DelBlocks {
		if s := get(p); s.in {
			x.unionDel(p, s.until)
			s.in = false
		}
	}
	for _, b := range ch.PutBlocks {
		s := get(b.Prefix)
		x.unionPut(b.Prefix, b.Until)
		s.in, s.until = true, b.Until
	}
	fwd = toKernel(x.un.Changes(), nowMs)
	for p, s := range st {
		switch {
		case s.prevExists:
			x.unionPut(p, s.prevUntil)
		case s.in:
			x.unionDel(p, s.until)
		}
	}
	back = toKernel(x.un.Changes(), nowMs)
	return fwd, back
}

// toKernel turns a union diff into kernel elements: deletes of pieces that
// have not expired yet (the kernel dropped the others itself), adds and
// re-times of pieces that have not expired, with their remaining time.
func toKernel(d union.Diff[firewall.Scope], nowMs int64) kdiff {
	var k kdiff
	for _, pc := range d.Del {
		if pc.Expiry == 0 || pc.Expiry > nowMs {
			k.del = append(k.del, pc.Scope.Element(pc.Prefix, 0))
		}
	}
	for _, l := range [][]union.Piece[firewall.Scope]{d.Add, d.Retime} {
		for _, pc := range l {
			if e, ok := pieceElement(pc, nowMs); ok {
				k.add = append(k.add, e)
			}
		}
	}
	return k
}

// pieceElement is the kernel element of a piece with its remaining time;
// ok false if it has expired.
func pieceElement(pc union.Piece[firewall.Scope], nowMs int64) (firewall.Element, bool) {
	var t time.Duration
	if pc.Expiry != 0 {
		if pc.Expiry <= nowMs {
			return firewall.Element{}, false
		}
		t = time.Duration(pc.Expiry-nowMs) * time.Millisecond
	}
	return pc.Scope.Element(pc.Prefix, t), true
}

// applyKernel sends a kernel diff; nothing to send is no call.
func (dp *Path) applyKernel(d kdiff) error {
	if d.empty() {
		return nil
	}
	return dp.kernel.Apply(d.del, d.add)
}

// restoreKernel puts the kernel back as it was before a change whose undo
// diff is back, best effort (reconcile corrects what fails).
func (dp *Path) restoreKernel(back kdiff) {
	if err := dp.applyKernel(back); err != nil {
		dp.log.Error("undo in the kernel failed; reconcile will correct it", "err", err)
	}
}

// syncCarves makes the union's carve-outs the guard's holes (the
// allowlist, the host's own addresses, loopback, link-local and the other
// ranges parry never blocks): no piece covers them, whatever the records
// say (a block from before an allowlist entry, a feed's /8). Once the
// kernel follows the union, the change goes to the kernel now; a failure
// is the reconcile's to correct. Caller holds dp.mu or runs before the
// Path is shared.
func (dp *Path) syncCarves() {
	x := dp.blocks
	want := make(map[netip.Prefix]bool)
	for _, h := range dp.guard.holes() {
		// The guard's IPv4-mapped range (::ffff:0:0/96) is a refusal of
		// IPv6 targets written as IPv4-mapped; the union reads it as all
		// of IPv4.
		if !h.Addr().Is4In6() {
			want[h.Masked()] = true
		}
	}
	for h := range x.carves {
		if !want[h] {
			_ = x.un.Uncarve(h)
			delete(x.carves, h)
		}
	}
	for h := range want {
		if !x.carves[h] {
			if x.un.Carve(h) == nil {
				x.carves[h] = true
			}
		}
	}
	if !x.tracking {
		return
	}
	if err := dp.applyKernel(toKernel(x.un.Changes(), dp.now().UnixMilli())); err != nil {
		dp.log.Error("carving guarded ranges out of the kernel's blocks failed; reconcile will correct it", "err", err)
		dp.kernelError(err)
	}
}
