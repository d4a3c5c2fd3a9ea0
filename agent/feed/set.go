package feed

import (
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"iter"
	"net/netip"
	"slices"
)

// Set is a feed's entries in a compact sorted form: 8 bytes per IPv4
// prefix, 24 per IPv6 prefix (a []netip.Prefix costs 32 per entry). Its
// prefixes are masked, IPv4-mapped IPv6 is stored as IPv4, and no entry
// contains another (an entry covered by a broader one of the same feed is
// dropped while building). A Set is immutable once built.
type Set struct {
	v4 []uint64 // addr<<8 | bits, ascending
	v6 []key6   // ascending by (hi, lo, bits)
}

type key6 struct {
	hi, lo uint64
	bits   uint8
}

func cmp6(a, b key6) int {
	if c := cmp.Compare(a.hi, b.hi); c != 0 {
		return c
	}
	if c := cmp.Compare(a.lo, b.lo); c != 0 {
		return c
	}
	return cmp.Compare(a.bits, b.bits)
}

// last6 is the last address inside k.
func (k key6) last() (hi, lo uint64) {
	hi, lo = k.hi, k.lo
	switch {
	case k.bits == 0:
		return ^uint64(0), ^uint64(0)
	case k.bits <= 64:
		return hi | (^uint64(0) >> k.bits), ^uint64(0)
	default:
		return hi, lo | (^uint64(0) >> (k.bits - 64))
	}
}

func less128(ahi, alo, bhi, blo uint64) bool { return ahi < bhi || (ahi == bhi && alo <= blo) }

// Len is the number of entries.
func (s *Set) Len() int { return len(s.v4) + len(s.v6) }

// Len4 and Len6 count the entries of one family.
func (s *Set) Len4() int { return len(s.v4) }
func (s *Set) Len6() int { return len(s.v6) }

func pfx4(k uint64) netip.Prefix {
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], uint32(k>>8))
	return netip.PrefixFrom(netip.AddrFrom4(b), int(k&0xff))
}

func pfx6(k key6) netip.Prefix {
	var b [16]byte
	binary.BigEndian.PutUint64(b[:8], k.hi)
	binary.BigEndian.PutUint64(b[8:], k.lo)
	return netip.PrefixFrom(netip.AddrFrom16(b), int(k.bits))
}

// All yields every entry, IPv4 first, each family in address order.
func (s *Set) All() iter.Seq[netip.Prefix] {
	return func(yield func(netip.Prefix) bool) {
		if s == nil {
			return
		}
		for _, k := range s.v4 {
			if !yield(pfx4(k)) {
				return
			}
		}
		for _, k := range s.v6 {
			if !yield(pfx6(k)) {
				return
			}
		}
	}
}

// Prefixes returns the entries as a slice (32 bytes each; for small sets
// and tests — prefer All for large ones).
func (s *Set) Prefixes() []netip.Prefix {
	out := make([]netip.Prefix, 0, s.Len())
	for p := range s.All() {
		out = append(out, p)
	}
	return out
}

// Lookup returns the entry that contains a, if any.
func (s *Set) Lookup(a netip.Addr) (netip.Prefix, bool) {
	if s == nil || !a.IsValid() {
		return netip.Prefix{}, false
	}
	a = a.Unmap()
	if a.Is4() {
		b := a.As4()
		ip := uint64(binary.BigEndian.Uint32(b[:]))
		// The last entry starting at or before ip is the only candidate:
		// entries do not nest.
		i, _ := slices.BinarySearch(s.v4, ip<<8|0xff)
		if i == 0 {
			return netip.Prefix{}, false
		}
		k := s.v4[i-1]
		bits := k & 0xff
		start := k >> 8
		if bits == 0 || ip>>(32-bits) == start>>(32-bits) {
			return pfx4(k), true
		}
		return netip.Prefix{}, false
	}
	b := a.As16()
	q := key6{binary.BigEndian.Uint64(b[:8]), binary.BigEndian.Uint64(b[8:]), 0xff}
	i, _ := slices.BinarySearchFunc(s.v6, q, cmp6)
	if i == 0 {
		return netip.Prefix{}, false
	}
	k := s.v6[i-1]
	hi, lo := k.last()
	if less128(q.hi, q.lo, hi, lo) {
		return pfx6(k), true
	}
	return netip.Prefix{}, false
}

// Normalize masks p, turns IPv4-mapped IPv6 (::ffff:a.b.c.d/96+n) into
// IPv4 /n, and refuses zones.
func Normalize(p netip.Prefix) (netip.Prefix, error) {
	if !p.IsValid() {
		return netip.Prefix{}, errors.New("invalid prefix")
	}
	if p.Addr().Zone() != "" {
		return netip.Prefix{}, errors.New("zoned address")
	}
	p = p.Masked()
	if a := p.Addr(); a.Is4In6() && p.Bits() >= 96 {
		p = netip.PrefixFrom(a.Unmap(), p.Bits()-96)
	}
	return p, nil
}

// builder collects prefixes (already normalised) and builds a Set.
type builder struct {
	v4 []uint64
	v6 []key6
}

func (b *builder) add(p netip.Prefix) {
	a := p.Addr()
	if a.Is4() {
		x := a.As4()
		b.v4 = append(b.v4, uint64(binary.BigEndian.Uint32(x[:]))<<8|uint64(p.Bits()))
		return
	}
	x := a.As16()
	b.v6 = append(b.v6, key6{binary.BigEndian.Uint64(x[:8]), binary.BigEndian.Uint64(x[8:]), uint8(p.Bits())})
}

// build sorts, drops exact duplicates and entries covered by a broader
// entry, and counts both.
func (b *builder) build() (s *Set, dups, covered int) {
	slices.Sort(b.v4)
	out4 := b.v4[:0]
	var end4 uint64 // last address of the current cover, +1; 0: none
	var prev4 uint64
	for i, k := range b.v4 {
		if i > 0 && k == prev4 {
			dups++
			continue
		}
		prev4 = k
		start := k >> 8
		if end4 != 0 && start < end4 {
			covered++
			continue
		}
		out4 = append(out4, k)
		end4 = start + (uint64(1) << (32 - k&0xff))
	}
	slices.SortFunc(b.v6, cmp6)
	out6 := b.v6[:0]
	var have bool
	var endHi, endLo uint64 // last address of the current cover
	for i, k := range b.v6 {
		if i > 0 && k == b.v6[i-1] {
			dups++
			continue
		}
		if have && less128(k.hi, k.lo, endHi, endLo) {
			covered++
			continue
		}
		out6 = append(out6, k)
		endHi, endLo = k.last()
		have = true
	}
	return &Set{v4: slices.Clip(out4), v6: slices.Clip(out6)}, dups, covered
}

// SetOf builds a Set from prefixes, normalising each. For tests and
// callers holding a few prefixes; feeds build theirs while parsing.
func SetOf(ps ...netip.Prefix) (*Set, error) {
	var b builder
	for _, p := range ps {
		n, err := Normalize(p)
		if err != nil {
			return nil, fmt.Errorf("set of %s: %w", p, err)
		}
		b.add(n)
	}
	s, _, _ := b.build()
	return s, nil
}

// Diff is what a refresh changes: entries to add, to remove, and to keep.
// Kept entries must be renewed (their expiry pushed to now + for) so that
// a list does not expire all together while it is still published.
type Diff struct {
	Added, Removed, Kept *Set
}

// Compare computes the diff from old to new in one merge pass.
func Compare(old, new *Set) Diff {
	if old == nil {
		old = &Set{}
	}
	if new == nil {
		new = &Set{}
	}
	if old == new { // sets are immutable: share, do not copy
		return Diff{Added: &Set{}, Removed: &Set{}, Kept: new}
	}
	a4, r4, k4 := merge(old.v4, new.v4, cmp.Compare[uint64])
	a6, r6, k6 := merge(old.v6, new.v6, cmp6)
	return Diff{Added: &Set{a4, a6}, Removed: &Set{r4, r6}, Kept: &Set{k4, k6}}
}

func merge[T any](old, new []T, c func(a, b T) int) (added, removed, kept []T) {
	i, j := 0, 0
	for i < len(old) && j < len(new) {
		switch d := c(old[i], new[j]); {
		case d == 0:
			kept = append(kept, new[j])
			i++
			j++
		case d < 0:
			removed = append(removed, old[i])
			i++
		default:
			added = append(added, new[j])
			j++
		}
	}
	removed = append(removed, old[i:]...)
	added = append(added, new[j:]...)
	return added, removed, kept
}

// Changed reports whether the diff adds or removes anything.
func (d Diff) Changed() bool { return d.Added.Len() > 0 || d.Removed.Len() > 0 }

// Binary form of a Set: uvarint count of IPv4 entries, each as the uvarint
// delta from the previous key (keys ascend, so deltas are small: a
// 100,000-entry list takes about 400 KB); then the uvarint count of IPv6
// entries, 17 bytes each (16 address bytes, then the prefix length).

func (s *Set) appendBinary(b []byte) []byte {
	b = binary.AppendUvarint(b, uint64(len(s.v4)))
	var prev uint64
	for _, k := range s.v4 {
		b = binary.AppendUvarint(b, k-prev)
		prev = k
	}
	b = binary.AppendUvarint(b, uint64(len(s.v6)))
	for _, k := range s.v6 {
		b = binary.BigEndian.AppendUint64(b, k.hi)
		b = binary.BigEndian.AppendUint64(b, k.lo)
		b = append(b, k.bits)
	}
	return b
}

var errCorrupt = errors.New("corrupt feed state")

// decodeSet reads a Set written by appendBinary and checks it: prefixes
// masked and in strictly ascending order. It returns the rest of b.
func decodeSet(b []byte) (*Set, []byte, error) {
	n, m := binary.Uvarint(b)
	if m <= 0 || n > uint64(len(b)) { // each entry takes at least one byte
		return nil, nil, errCorrupt
	}
	b = b[m:]
	s := &Set{v4: make([]uint64, 0, n)}
	var prev, end4 uint64
	for i := uint64(0); i < n; i++ {
		d, m := binary.Uvarint(b)
		if m <= 0 || (i > 0 && d == 0) || d > 1<<40 {
			return nil, nil, errCorrupt
		}
		b = b[m:]
		k := prev + d
		bits := k & 0xff
		if k>>40 != 0 || bits > 32 || pfx4(k).Masked() != pfx4(k) || (i > 0 && k>>8 < end4) {
			return nil, nil, errCorrupt // not a prefix, or inside the previous one
		}
		s.v4 = append(s.v4, k)
		prev = k
		end4 = k>>8 + uint64(1)<<(32-bits)
	}
	n, m = binary.Uvarint(b)
	if m <= 0 || n > uint64(len(b))/17+1 {
		return nil, nil, errCorrupt
	}
	b = b[m:]
	if uint64(len(b)) < n*17 {
		return nil, nil, errCorrupt
	}
	s.v6 = make([]key6, 0, n)
	for i := uint64(0); i < n; i++ {
		k := key6{binary.BigEndian.Uint64(b[:8]), binary.BigEndian.Uint64(b[8:16]), b[16]}
		b = b[17:]
		if k.bits > 128 || pfx6(k).Masked() != pfx6(k) {
			return nil, nil, errCorrupt
		}
		if i > 0 {
			if hi, lo := s.v6[i-1].last(); less128(k.hi, k.lo, hi, lo) {
				return nil, nil, errCorrupt // not after the previous one
			}
		}
		s.v6 = append(s.v6, k)
	}
	return s, b, nil
}
