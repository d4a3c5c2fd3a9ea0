// Package union computes what parry's logical blocks add up to in the
// kernel. parry keeps every block as its own record (a prefix, a scope such
// as a port and an action, an expiry, a cause); an nftables interval set
// cannot hold overlapping intervals. The union turns the records into
// non-overlapping prefixes ("pieces"), each carrying the latest expiry
// among the blocks that cover it, minus the carve-outs (prefixes that are
// never blocked: the allowlist, the host's own addresses, loopback). A /8
// minus an allowlisted /24 is the 16 prefixes around the /24.
//
// The pieces are canonical: the longest prefixes on which the value (the
// latest covering expiry) is the same, so the kernel state depends only on
// the blocks, not on the order they came in, and it is the fewest prefixes
// that express it. Adding or removing one block changes only the pieces
// inside the smallest region that can change (the block's prefix, or the
// largest constant region around it), found in O(prefix length) steps, and
// the union reports the kernel diff: pieces to add, to delete and to
// re-time. It is pure logic: no kernel, no clock.
//
// Blocks of different scopes never merge (their kernel elements live in
// different sets or differ in their keys); carve-outs apply to every scope.
package union

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
)

// Block is one logical block as the union needs it.
type Block[S comparable] struct {
	Prefix netip.Prefix
	Scope  S     // e.g. protocol, port and action; the zero value for a plain block
	Expiry int64 // Unix milliseconds; 0 = permanent
}

// Piece is one kernel element.
type Piece[S comparable] struct {
	Prefix netip.Prefix
	Scope  S
	Expiry int64 // Unix milliseconds; 0 = permanent
}

// Diff is what the kernel must do to follow a set of changes. Del carries
// the expiry the piece had, Retime the new one.
type Diff[S comparable] struct {
	Add, Del, Retime []Piece[S]
}

// Empty reports whether d changes nothing.
func (d Diff[S]) Empty() bool { return len(d.Add)+len(d.Del)+len(d.Retime) == 0 }

// ErrInvalid is returned for an invalid prefix or a negative expiry.
var ErrInvalid = errors.New("union: invalid block")

type trieKey[S comparable] struct {
	scope S
	v6    bool
}

type pieceKey[S comparable] struct {
	p     pfx
	scope S
	v6    bool
}

// was is the state of one piece before the pending changes (old) and now.
type was struct{ old, now int64 }

// Union is the set of logical blocks and carve-outs, and the kernel pieces
// they add up to. ID identifies a logical block (its record in the store);
// S is its scope. Not safe for concurrent use: its owner serialises calls.
type Union[ID, S comparable] struct {
	tries    map[trieKey[S]]*trie[ID]
	carves   [2]map[pfx]bool // by family: 0 IPv4, 1 IPv6
	blocks   int
	tracking bool
	pending  map[pieceKey[S]]*was
}

// New returns an empty union. It does not track changes until the first
// call of Pieces (a full build needs no diff).
func New[ID, S comparable]() *Union[ID, S] {
	return &Union[ID, S]{
		tries:   map[trieKey[S]]*trie[ID]{},
		carves:  [2]map[pfx]bool{{}, {}},
		pending: map[pieceKey[S]]*was{},
	}
}

// Len is the number of logical blocks.
func (u *Union[ID, S]) Len() int { return u.blocks }

func norm(p netip.Prefix) (netip.Prefix, bool, error) {
	if !p.IsValid() || p.Addr().Zone() != "" {
		return netip.Prefix{}, false, fmt.Errorf("%w: prefix %v", ErrInvalid, p)
	}
	if a := p.Addr(); a.Is4In6() {
		if p.Bits() < 96 {
			return netip.Prefix{}, false, fmt.Errorf("%w: IPv4-mapped prefix %v shorter than /96", ErrInvalid, p)
		}
		p = netip.PrefixFrom(a.Unmap(), p.Bits()-96)
	}
	p = p.Masked()
	return p, p.Addr().Is6(), nil
}

func internal(exp int64) int64 {
	if exp == 0 {
		return permanent
	}
	return exp
}

func external(v int64) int64 {
	if v == permanent {
		return 0
	}
	return v
}

func (u *Union[ID, S]) trie(scope S, v6 bool) *trie[ID] {
	k := trieKey[S]{scope, v6}
	t := u.tries[k]
	if t == nil {
		t = newTrie[ID](v6)
		fam := 0
		if v6 {
			fam = 1
		}
		for c := range u.carves[fam] {
			t.setCarve(c, true) // an empty trie: no pieces change
		}
		u.tries[k] = t
	}
	return t
}

// Add adds block id, or changes its expiry if id is already there with
// the same prefix and scope. The same id with another prefix or scope is
// another block: Remove the old one first.
func (u *Union[ID, S]) Add(id ID, b Block[S]) error {
	p, v6, err := norm(b.Prefix)
	if err != nil {
		return err
	}
	if b.Expiry < 0 {
		return fmt.Errorf("%w: expiry %d", ErrInvalid, b.Expiry)
	}
	t, k, exp := u.trie(b.Scope, v6), toPfx(p), internal(b.Expiry)
	var existed bool
	var prev int64
	u.change(t, b.Scope, k,
		func() { existed, prev = t.set(k, id, exp) },
		func() {
			if existed {
				t.set(k, id, prev)
			} else {
				t.del(k, id)
			}
		})
	if !existed {
		u.blocks++
	}
	return nil
}

// Remove removes block id (given with the prefix and scope it was added
// with); it reports whether it was there.
func (u *Union[ID, S]) Remove(id ID, b Block[S]) bool {
	p, v6, err := norm(b.Prefix)
	if err != nil {
		return false
	}
	t := u.tries[trieKey[S]{b.Scope, v6}]
	if t == nil {
		return false
	}
	k := toPfx(p)
	var found bool
	var prev int64
	u.change(t, b.Scope, k,
		func() { found, prev = t.del(k, id) },
		func() {
			if found {
				t.set(k, id, prev)
			}
		})
	if found {
		u.blocks--
	}
	return found
}

// Carve adds a never-block prefix: no piece of any scope covers it.
func (u *Union[ID, S]) Carve(p netip.Prefix) error { return u.carve(p, true) }

// Uncarve removes a never-block prefix added by Carve.
func (u *Union[ID, S]) Uncarve(p netip.Prefix) error { return u.carve(p, false) }

func (u *Union[ID, S]) carve(p netip.Prefix, on bool) error {
	p, v6, err := norm(p)
	if err != nil {
		return err
	}
	fam, k := 0, toPfx(p)
	if v6 {
		fam = 1
	}
	if u.carves[fam][k] == on {
		return nil
	}
	if on {
		u.carves[fam][k] = true
	} else {
		delete(u.carves[fam], k)
	}
	for tk, t := range u.tries {
		if tk.v6 == v6 {
			u.change(t, tk.scope, k, func() { t.setCarve(k, on) }, func() { t.setCarve(k, !on) })
		}
	}
	return nil
}

// change applies a change confined to prefix k of t and, when tracking,
// records the pieces it changes. f only changes inside k, so the pieces that
// can change are those inside R: the largest prefix around k on which f is
// constant before or after (a piece that may merge or split), else k. The
// change is applied, R found, the pieces of R read, the change reverted to
// read R's old pieces, and applied again (each step O(prefix length) plus
// the pieces of R).
func (u *Union[ID, S]) change(t *trie[ID], scope S, k pfx, apply, revert func()) {
	if !u.tracking {
		apply()
		return
	}
	before, okB := t.highestConst(k)
	apply()
	after, okA := t.highestConst(k)
	R := k
	if okB && before.len < R.len {
		R = before
	}
	if okA && after.len < R.len {
		R = after
	}
	var now, old []Piece[S]
	collect := func(into *[]Piece[S]) func(pfx, int64) {
		return func(p pfx, v int64) { *into = append(*into, Piece[S]{Prefix: p.prefix(t.v6), Scope: scope, Expiry: v}) }
	}
	t.decomp(R, collect(&now))
	revert()
	t.decomp(R, collect(&old))
	apply()
	for _, pc := range old {
		key := pieceKey[S]{toPfx(pc.Prefix), scope, t.v6}
		w := u.pending[key]
		if w == nil {
			w = &was{old: pc.Expiry}
			u.pending[key] = w
		}
		w.now = none
	}
	for _, pc := range now {
		key := pieceKey[S]{toPfx(pc.Prefix), scope, t.v6}
		w := u.pending[key]
		if w == nil {
			w = &was{old: none}
			u.pending[key] = w
		}
		w.now = pc.Expiry
	}
}

// Changes returns the kernel diff of every change since the last call of
// Changes or Pieces, and forgets it. Pieces within each list are sorted.
func (u *Union[ID, S]) Changes() Diff[S] {
	var d Diff[S]
	for k, w := range u.pending {
		pc := Piece[S]{Prefix: k.p.prefix(k.v6), Scope: k.scope}
		switch {
		case w.old == none && w.now != none:
			pc.Expiry = external(w.now)
			d.Add = append(d.Add, pc)
		case w.old != none && w.now == none:
			pc.Expiry = external(w.old)
			d.Del = append(d.Del, pc)
		case w.old != w.now:
			pc.Expiry = external(w.now)
			d.Retime = append(d.Retime, pc)
		}
	}
	clear(u.pending)
	for _, l := range [][]Piece[S]{d.Add, d.Del, d.Retime} {
		slices.SortFunc(l, comparePieces[S])
	}
	return d
}

func comparePieces[S comparable](a, b Piece[S]) int {
	if c := a.Prefix.Addr().Compare(b.Prefix.Addr()); c != 0 {
		return c
	}
	return a.Prefix.Bits() - b.Prefix.Bits()
}

// Pieces returns every kernel piece (for a full build or re-assert), per
// scope sorted by address, forgets pending changes, and from then on
// tracks changes for Changes.
func (u *Union[ID, S]) Pieces() []Piece[S] {
	var out []Piece[S]
	for k, t := range u.tries {
		t.decomp(pfx{}, func(p pfx, v int64) {
			out = append(out, Piece[S]{Prefix: p.prefix(k.v6), Scope: k.scope, Expiry: external(v)})
		})
	}
	clear(u.pending)
	u.tracking = true
	return out
}

// Expiry is the kernel's expiry for addr in scope: the latest expiry of the
// blocks covering it (0 = permanent), ok false if nothing covers it or a
// carve-out does.
func (u *Union[ID, S]) Expiry(addr netip.Addr, scope S) (int64, bool) {
	p, v6, err := norm(netip.PrefixFrom(addr, addr.BitLen()))
	if err != nil {
		return 0, false
	}
	t := u.tries[trieKey[S]{scope, v6}]
	if t == nil {
		return 0, false
	}
	v := t.value(toPfx(p))
	return external(v), v != none
}
