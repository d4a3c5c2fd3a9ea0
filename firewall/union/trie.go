package union

import (
	"encoding/binary"
	"math"
	"math/bits"
	"net/netip"
)

// u128 is an address as a 128-bit number, most significant bit first; an
// IPv4 address sits in the top 32 bits.
type u128 struct{ hi, lo uint64 }

func (k u128) bit(i int) int {
	if i < 64 {
		return int(k.hi>>(63-i)) & 1
	}
	return int(k.lo>>(127-i)) & 1
}

// mask keeps the top n bits.
func (k u128) mask(n int) u128 {
	switch {
	case n <= 0:
		return u128{}
	case n < 64:
		return u128{k.hi &^ (math.MaxUint64 >> n), 0}
	case n == 64:
		return u128{k.hi, 0}
	case n < 128:
		return u128{k.hi, k.lo &^ (math.MaxUint64 >> (n - 64))}
	}
	return k
}

func (k u128) setBit(i int) u128 {
	if i < 64 {
		k.hi |= 1 << (63 - i)
	} else {
		k.lo |= 1 << (127 - i)
	}
	return k
}

// commonLen is the number of leading bits a and b share, at most limit.
func commonLen(a, b u128, limit int) int {
	n := 128
	if x := a.hi ^ b.hi; x != 0 {
		n = bits.LeadingZeros64(x)
	} else if x := a.lo ^ b.lo; x != 0 {
		n = 64 + bits.LeadingZeros64(x)
	}
	return min(n, limit)
}

// pfx is a prefix in a trie: a masked key and its length.
type pfx struct {
	key u128
	len int
}

func contains(p, q pfx) bool { return p.len <= q.len && q.key.mask(p.len) == p.key }

// half is the child prefix of p on side (0 or 1).
func (p pfx) half(side int) pfx {
	h := pfx{p.key, p.len + 1}
	if side == 1 {
		h.key = h.key.setBit(p.len)
	}
	return h
}

func toPfx(p netip.Prefix) pfx {
	a := p.Addr()
	if a.Is4() {
		b := a.As4()
		return pfx{u128{uint64(binary.BigEndian.Uint32(b[:])) << 32, 0}, p.Bits()}
	}
	b := a.As16()
	return pfx{u128{binary.BigEndian.Uint64(b[:8]), binary.BigEndian.Uint64(b[8:])}, p.Bits()}
}

func (p pfx) prefix(v6 bool) netip.Prefix {
	if !v6 {
		var b [4]byte
		binary.BigEndian.PutUint32(b[:], uint32(p.key.hi>>32))
		return netip.PrefixFrom(netip.AddrFrom4(b), p.len)
	}
	var b [16]byte
	binary.BigEndian.PutUint64(b[:8], p.key.hi)
	binary.BigEndian.PutUint64(b[8:], p.key.lo)
	return netip.PrefixFrom(netip.AddrFrom16(b), p.len)
}

// none is the value of an address no block covers; permanent is the
// largest value. Timed expiries lie in between.
const (
	none      = int64(0)
	permanent = int64(math.MaxInt64)
)

// node is a node of a path-compressed binary trie (nodes exist only at
// prefixes holding blocks or carve-outs, and where two paths branch).
// Nodes live in one slice and refer to each other by index (0 = none), so
// that a million blocks are a few large allocations without pointers.
type node struct {
	key   u128
	child [2]int32
	// maxg and ming summarise the subtree, ignoring everything above it:
	// g(a) is the largest own value of the nodes between here and
	// address a (none where nothing covers a); maxg and ming are its
	// maximum and minimum over the node's whole prefix.
	maxg, ming int64
	ent        int32 // first entry (blocks at exactly this prefix), 0 = none
	len        uint8 // prefix length, 0..128
	carve      bool  // a never-block prefix: nothing inside is in the kernel
	hasCarve   bool  // this node or one below it is a carve-out
}

func (n *node) plen() int { return int(n.len) }
func (n *node) pfx() pfx  { return pfx{n.key, int(n.len)} }

type entry[ID comparable] struct {
	id   ID
	exp  int64
	next int32
}

// trie holds the logical blocks of one scope and family.
type trie[ID comparable] struct {
	v6      bool
	root    int32
	nodes   []node
	free    []int32
	ents    []entry[ID]
	freeEnt []int32
}

func newTrie[ID comparable](v6 bool) *trie[ID] {
	return &trie[ID]{v6: v6, nodes: make([]node, 1), ents: make([]entry[ID], 1)}
}

func (t *trie[ID]) alloc(p pfx) int32 {
	n := node{key: p.key, len: uint8(p.len)}
	if k := len(t.free); k > 0 {
		i := t.free[k-1]
		t.free = t.free[:k-1]
		t.nodes[i] = n
		return i
	}
	t.nodes = append(t.nodes, n)
	return int32(len(t.nodes) - 1)
}

func (t *trie[ID]) own(i int32) int64 {
	v := none
	for e := t.nodes[i].ent; e != 0; e = t.ents[e].next {
		v = max(v, t.ents[e].exp)
	}
	return v
}

// setSlot points the root (parent 0) or a child slot at i.
func (t *trie[ID]) setSlot(parent int32, side int, i int32) {
	if parent == 0 {
		t.root = i
	} else {
		t.nodes[parent].child[side] = i
	}
}

// find returns the node of exactly p (0 if none) and its ancestors, root first.
func (t *trie[ID]) find(p pfx, path []int32) (int32, []int32) {
	for n := t.root; n != 0; {
		nd := &t.nodes[n]
		np := nd.pfx()
		if np == p {
			return n, path
		}
		if !contains(np, p) {
			return 0, path
		}
		path = append(path, n)
		n = nd.child[p.key.bit(np.len)]
	}
	return 0, path
}

// upsert returns the node of p, creating it (and a branching node) if
// needed, and its ancestors.
func (t *trie[ID]) upsert(p pfx, path []int32) (int32, []int32) {
	parent, side := int32(0), 0
	n := t.root
	for n != 0 {
		np := t.nodes[n].pfx()
		if np == p {
			return n, path
		}
		if !contains(np, p) {
			break
		}
		path = append(path, n)
		parent, side = n, p.key.bit(np.len)
		n = t.nodes[n].child[side]
	}
	i := t.alloc(p)
	if n == 0 {
		t.setSlot(parent, side, i)
		return i, path
	}
	old := t.nodes[n].pfx()
	if contains(p, old) { // p goes above old
		t.nodes[i].child[old.key.bit(p.len)] = n
		t.setSlot(parent, side, i)
		t.update(i)
		return i, path
	}
	c := commonLen(p.key, old.key, min(p.len, old.len))
	br := t.alloc(pfx{p.key.mask(c), c})
	t.nodes[br].child[p.key.bit(c)] = i
	t.nodes[br].child[old.key.bit(c)] = n
	t.setSlot(parent, side, br)
	return i, append(path, br)
}

// update recomputes the summary of node i from its entries and children.
func (t *trie[ID]) update(i int32) {
	nd := &t.nodes[i]
	own := t.own(i)
	maxg, hasCarve := own, nd.carve
	full := true
	minc := permanent
	for side, c := range nd.child {
		if c == 0 {
			full = false
			continue
		}
		cn := &t.nodes[c]
		maxg = max(maxg, cn.maxg)
		hasCarve = hasCarve || cn.hasCarve
		if cn.pfx() != nd.pfx().half(side) {
			full = false
		}
		minc = min(minc, cn.ming)
	}
	if !full {
		minc = none
	}
	nd.maxg, nd.ming, nd.hasCarve = maxg, max(own, minc), hasCarve
	if nd.carve {
		nd.maxg, nd.ming = none, none
	}
}

// fix updates node i (if it still exists) and its ancestors, splicing
// out nodes left with no entry, no carve-out and fewer than two children.
func (t *trie[ID]) fix(i int32, path []int32) {
	for k := len(path); k >= 0; k-- {
		var n int32
		if k == len(path) {
			n = i
		} else {
			n = path[k]
		}
		nd := &t.nodes[n]
		if nd.ent == 0 && !nd.carve && (nd.child[0] == 0 || nd.child[1] == 0) {
			only := nd.child[0] | nd.child[1]
			parent, side := int32(0), 0
			if k > 0 {
				parent = path[k-1]
				side = nd.key.bit(t.nodes[parent].plen())
			}
			t.setSlot(parent, side, only)
			t.nodes[n] = node{}
			t.free = append(t.free, n)
			continue
		}
		t.update(n)
	}
}

// set gives block id at p the expiry exp; it reports whether id was there
// and its previous expiry.
func (t *trie[ID]) set(p pfx, id ID, exp int64) (bool, int64) {
	n, path := t.upsert(p, nil)
	for e := t.nodes[n].ent; e != 0; e = t.ents[e].next {
		if t.ents[e].id == id {
			prev := t.ents[e].exp
			t.ents[e].exp = exp
			t.fix(n, path)
			return true, prev
		}
	}
	var e int32
	if k := len(t.freeEnt); k > 0 {
		e = t.freeEnt[k-1]
		t.freeEnt = t.freeEnt[:k-1]
	} else {
		t.ents = append(t.ents, entry[ID]{})
		e = int32(len(t.ents) - 1)
	}
	t.ents[e] = entry[ID]{id: id, exp: exp, next: t.nodes[n].ent}
	t.nodes[n].ent = e
	t.fix(n, path)
	return false, 0
}

// del removes block id at p; it reports whether it was there and its expiry.
func (t *trie[ID]) del(p pfx, id ID) (bool, int64) {
	n, path := t.find(p, nil)
	if n == 0 {
		return false, 0
	}
	prev := int32(0)
	for e := t.nodes[n].ent; e != 0; prev, e = e, t.ents[e].next {
		if t.ents[e].id != id {
			continue
		}
		exp := t.ents[e].exp
		if prev == 0 {
			t.nodes[n].ent = t.ents[e].next
		} else {
			t.ents[prev].next = t.ents[e].next
		}
		var zero entry[ID]
		t.ents[e] = zero
		t.freeEnt = append(t.freeEnt, e)
		t.fix(n, path)
		return true, exp
	}
	return false, 0
}

// setCarve marks or unmarks p as a carve-out.
func (t *trie[ID]) setCarve(p pfx, on bool) {
	var n int32
	var path []int32
	if on {
		n, path = t.upsert(p, nil)
	} else if n, path = t.find(p, nil); n == 0 {
		return
	}
	t.nodes[n].carve = on
	t.fix(n, path)
}

// constant reports whether f (the kernel's value: the largest expiry of the
// blocks covering an address, none inside a carve-out) is the same defined
// value on all of X, given M (the largest own value of the nodes strictly
// above X), and n, the first node inside X (0 if none).
func (t *trie[ID]) constant(X pfx, M int64, n int32) (int64, bool) {
	if n == 0 {
		return M, M != none
	}
	nd := &t.nodes[n]
	if nd.hasCarve {
		return none, false
	}
	if nd.plen() > X.len { // gaps around nd have value M
		return M, M != none && nd.maxg <= M
	}
	hi, lo := max(M, nd.maxg), max(M, nd.ming)
	return lo, hi == lo && lo != none
}

// highestConst returns the shortest prefix X containing p (p itself
// included) on which f is constant and defined.
func (t *trie[ID]) highestConst(p pfx) (pfx, bool) {
	M := none
	n := t.root
	L := 0
	for L <= p.len {
		X := pfx{p.key.mask(L), L}
		if n != 0 && !contains(X, t.nodes[n].pfx()) {
			n = 0 // p left the trie's paths: a gap from here down
		}
		if n == 0 {
			return X, M != none
		}
		nd := &t.nodes[n]
		if nd.plen() > L {
			// Every length from L until p and nd part (or p ends) holds
			// nd inside with gaps around it: one answer for all of them.
			if _, ok := t.constant(X, M, n); ok {
				return X, true
			}
			c := commonLen(p.key, nd.key, min(p.len, nd.plen()))
			switch {
			case c >= nd.plen(): // p goes through nd
				L = nd.plen()
				continue
			case c >= p.len: // p contains nd
				return pfx{}, false
			case M != none: // p leaves nd's path after bit c: a gap of value M
				return pfx{p.key.mask(c + 1), c + 1}, true
			}
			return pfx{}, false
		}
		if _, ok := t.constant(X, M, n); ok {
			return X, true
		}
		if nd.carve {
			return pfx{}, false
		}
		M = max(M, t.own(n))
		L++
		if L > p.len {
			break
		}
		n = nd.child[p.key.bit(nd.plen())]
	}
	return pfx{}, false
}

// descend finds, for a region R, M (the largest own value of the nodes
// strictly above R), whether a carve-out covers R, and the first node
// inside R (0 if none).
func (t *trie[ID]) descend(R pfx) (int64, bool, int32) {
	M := none
	for n := t.root; n != 0; {
		nd := &t.nodes[n]
		np := nd.pfx()
		if contains(R, np) {
			return M, false, n
		}
		if !contains(np, R) {
			return M, false, 0
		}
		if nd.carve {
			return none, true, 0
		}
		M = max(M, t.own(n))
		n = nd.child[R.key.bit(np.len)]
	}
	return M, false, 0
}

// decomp emits the canonical pieces of f within R: the longest prefixes on
// which f is constant and defined (R itself if f is constant on it).
func (t *trie[ID]) decomp(R pfx, emit func(pfx, int64)) {
	M, carved, n := t.descend(R)
	if !carved {
		t.walk(R, M, n, emit)
	}
}

func (t *trie[ID]) walk(X pfx, M int64, n int32, emit func(pfx, int64)) {
	if v, ok := t.constant(X, M, n); ok {
		emit(X, v)
		return
	}
	if n == 0 {
		return // f is none on X
	}
	nd := &t.nodes[n]
	if nd.plen() > X.len {
		b := nd.key.bit(X.len)
		for side := range 2 {
			if side == b {
				t.walk(X.half(side), M, n, emit)
			} else if M != none {
				emit(X.half(side), M)
			}
		}
		return
	}
	if nd.carve {
		return
	}
	M2 := max(M, t.own(n))
	c0, c1 := nd.child[0], nd.child[1]
	t.walk(X.half(0), M2, c0, emit)
	t.walk(X.half(1), M2, c1, emit)
}

// value is f at one address (a full-length prefix).
func (t *trie[ID]) value(a pfx) int64 {
	M, carved, n := t.descend(a)
	if carved {
		return none
	}
	if n != 0 {
		if t.nodes[n].carve {
			return none
		}
		M = max(M, t.own(n))
	}
	return M
}
