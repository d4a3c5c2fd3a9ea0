package enforce

import (
	"iter"
	"net/netip"
)

// blockMap holds the index's blocks by target. IPv4 single addresses —
// most of a large feed or a `block --file` — are keyed by their 4 bytes
// (32 bytes a slot with the entry, and no pointer for the collector to
// scan), the rest by their prefix (56 bytes a slot): 1,000,000 addresses
// take about half the memory of one map[netip.Prefix]entry.
type blockMap struct {
	v4    map[uint32]entry
	other map[netip.Prefix]entry
}

func newBlockMap() blockMap {
	return blockMap{v4: make(map[uint32]entry), other: make(map[netip.Prefix]entry)}
}

// v4key is the key of an IPv4 single address; ok false for anything else.
func v4key(p netip.Prefix) (uint32, bool) {
	a := p.Addr()
	if !a.Is4() || p.Bits() != 32 {
		return 0, false
	}
	b := a.As4()
	return uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3]), true
}

func v4prefix(k uint32) netip.Prefix {
	return netip.PrefixFrom(netip.AddrFrom4([4]byte{byte(k >> 24), byte(k >> 16), byte(k >> 8), byte(k)}), 32)
}

func (m *blockMap) get(p netip.Prefix) (entry, bool) {
	if k, ok := v4key(p); ok {
		e, found := m.v4[k]
		return e, found
	}
	e, found := m.other[p]
	return e, found
}

// at is get without the second result.
func (m *blockMap) at(p netip.Prefix) entry { e, _ := m.get(p); return e }

func (m *blockMap) set(p netip.Prefix, e entry) {
	if k, ok := v4key(p); ok {
		m.v4[k] = e
		return
	}
	m.other[p] = e
}

func (m *blockMap) delete(p netip.Prefix) {
	if k, ok := v4key(p); ok {
		delete(m.v4, k)
		return
	}
	delete(m.other, p)
}

func (m *blockMap) len() int { return len(m.v4) + len(m.other) }

// all yields every block, in no order.
func (m *blockMap) all() iter.Seq2[netip.Prefix, entry] {
	return func(yield func(netip.Prefix, entry) bool) {
		for k, e := range m.v4 {
			if !yield(v4prefix(k), e) {
				return
			}
		}
		for p, e := range m.other {
			if !yield(p, e) {
				return
			}
		}
	}
}
