package enforce

import (
	"net/netip"
	"slices"

	"github.com/parryhq/parry/agent/store"
	"github.com/parryhq/parry/firewall"
	"github.com/parryhq/parry/firewall/union"
)

// entry is one active block in memory: 24 bytes, the text lives in its
// decision, shared by all the blocks one decision made.
type entry struct {
	created int64  // unix ms
	until   int64  // unix ms; 0 = permanent
	dec     uint64 // decision seq
}

func (e entry) expired(nowMs int64) bool { return e.until != 0 && e.until <= nowMs }

// decMeta is a decision's text in memory, shared by its blocks.
type decMeta struct {
	store.Decision
	refs int
}

// index is the in-memory view of the store's active blocks, so list and
// status never touch the kernel. Not safe for concurrent use: the path's
// lock (dp.mu) guards it.
type index struct {
	m       blockMap
	lens    [2][129]int32 // number of blocks per family and prefix length
	decs    map[uint64]*decMeta
	lastSeq uint64
	// un is what the blocks add up to in the kernel (kunion.go); tracking
	// is set once its changes are tracked.
	un       *blockUnion
	tracking bool
	carves   map[netip.Prefix]bool // the union's carve-outs (syncCarves)
}

func newIndex() *index {
	return &index{m: newBlockMap(), decs: make(map[uint64]*decMeta), un: union.New[netip.Prefix, firewall.Scope](),
		carves: map[netip.Prefix]bool{}}
}

func fam(p netip.Prefix) int {
	if p.Addr().Is4() {
		return 0
	}
	return 1
}

func (x *index) len() int { return x.m.len() }

func (x *index) get(p netip.Prefix) (entry, bool) { return x.m.get(p) }

// put adds or replaces a block, keeping the decisions' reference counts.
func (x *index) put(p netip.Prefix, e entry) {
	x.unionPut(p, e.until)
	if old, ok := x.m.get(p); ok && old.dec == e.dec { // a new expiry, same decision
		x.m.set(p, e)
		return
	} else if ok {
		x.unref(old.dec)
	} else {
		x.lens[fam(p)][p.Bits()]++
	}
	x.m.set(p, e)
	if d := x.decs[e.dec]; d != nil {
		d.refs++
	} else {
		x.decs[e.dec] = &decMeta{Decision: store.Decision{Seq: e.dec}, refs: 1}
	}
	if e.dec > x.lastSeq {
		x.lastSeq = e.dec
	}
}

// del removes a block; it reports the decision seq if that decision has no
// blocks left.
func (x *index) del(p netip.Prefix) (orphan uint64, ok bool) {
	old, found := x.m.get(p)
	if !found {
		return 0, false
	}
	x.m.delete(p)
	x.unionDel(p, old.until)
	x.lens[fam(p)][p.Bits()]--
	if x.unref(old.dec) {
		return old.dec, true
	}
	return 0, false
}

func (x *index) unref(seq uint64) bool {
	d := x.decs[seq]
	if d == nil {
		return false
	}
	d.refs--
	if d.refs <= 0 {
		delete(x.decs, seq)
		return true
	}
	return false
}

// addDecision records a decision's text (loaded or new). Blocks may refer
// to it before or after.
func (x *index) addDecision(dr store.Decision) {
	dr.Cause = nil // stays in the store only
	if d := x.decs[dr.Seq]; d != nil {
		d.Decision = dr
	} else {
		x.decs[dr.Seq] = &decMeta{Decision: dr}
	}
	if dr.Seq > x.lastSeq {
		x.lastSeq = dr.Seq
	}
}

// nextSeq allocates a decision sequence number.
func (x *index) nextSeq() uint64 { x.lastSeq++; return x.lastSeq }

func (x *index) decision(seq uint64) store.Decision {
	if d := x.decs[seq]; d != nil {
		return d.Decision
	}
	return store.Decision{Seq: seq}
}

// NextPrefixAddr adds 1 at bit position l-1 of a (the next /l block).
func NextPrefixAddr(a netip.Addr, l int) netip.Addr {
	b := a.As16()
	off := 0
	if a.Is4() {
		off = 96
	}
	bit := off + l - 1
	for i := bit / 8; i >= 0; i-- {
		inc := byte(1) << (7 - uint(bit%8))
		if i != bit/8 {
			inc = 1
		}
		s := b[i] + inc
		carry := s < b[i]
		b[i] = s
		if !carry {
			break
		}
	}
	n := netip.AddrFrom16(b)
	if a.Is4() {
		n = n.Unmap()
	}
	return n
}

// expired returns the blocks whose time is up.
func (x *index) expiredBlocks(nowMs int64) []netip.Prefix {
	var out []netip.Prefix
	for p, e := range x.m.all() {
		if e.expired(nowMs) {
			out = append(out, p)
		}
	}
	return out
}

func (x *index) countExpired(nowMs int64) int { return len(x.expiredBlocks(nowMs)) }

// sorted returns the active prefixes in address order.
func (x *index) sorted(nowMs int64) []netip.Prefix {
	out := make([]netip.Prefix, 0, x.m.len())
	for p, e := range x.m.all() {
		if !e.expired(nowMs) {
			out = append(out, p)
		}
	}
	slices.SortFunc(out, func(a, b netip.Prefix) int {
		if c := a.Addr().Compare(b.Addr()); c != 0 {
			return c
		}
		return a.Bits() - b.Bits()
	})
	return out
}

// orphans lists the decisions that keep no block once the blocks at
// targets leave them: unblocked, expired, or taken over by another
// decision. The one rule for dropping a decision's record.
func (x *index) orphans(targets []netip.Prefix) []uint64 {
	lose := map[uint64]int{}
	for _, p := range targets {
		if e, ok := x.m.get(p); ok {
			lose[e.dec]++
		}
	}
	var out []uint64
	for seq, n := range lose {
		if m := x.decs[seq]; m == nil || m.refs <= n {
			out = append(out, seq)
		}
	}
	return out
}

// familyCounts sums the per-prefix-length counters: O(1) in the blocks.
func (x *index) familyCounts() (v4, v6 int) {
	for _, n := range x.lens[0] {
		v4 += int(n)
	}
	for _, n := range x.lens[1] {
		v6 += int(n)
	}
	return v4, v6
}
