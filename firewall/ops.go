package firewall

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"github.com/google/nftables"
)

// Ensure creates the table, sets and chains if any is missing, in one
// transaction. It is idempotent and never removes elements from an intact
// table. If the table exists but its sets, chains or rules differ from the
// layout (another manager edited it, or an older parry built it), it
// rebuilds our table (only ours) in one transaction; its elements are then
// gone and the caller re-asserts its state.
func (f *NFT) Ensure() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	_, err := f.ensure()
	return err
}

// ensure returns whether it (re)built the table.
func (f *NFT) ensure() (bool, error) {
	why, err := f.check()
	if err != nil {
		return false, fmt.Errorf("ensure table: %w", err)
	}
	if why == "" {
		return false, nil
	}
	replace := why != "table missing"
	if replace {
		f.log.Warn("rebuilding nftables table", "reason", why)
	}
	if err := f.flush(func() error { return f.buildTable(replace) }); err != nil {
		return false, fmt.Errorf("create table: %w", err)
	}
	return true, nil
}

// Present reports cheaply whether the table and its chains and sets are in
// the kernel as built. It reads no set elements.
func (f *NFT) Present() (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	why, err := f.check()
	return why == "" && err == nil, err
}

// Remove deletes parry's table (package purge, `parry uninstall-rules`).
// A missing table is not an error.
func (f *NFT) Remove() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	err := f.flush(func() error {
		f.conn.AddTable(f.table) // so that the delete cannot fail on a missing table
		f.conn.DelTable(f.table)
		return nil
	})
	if err != nil {
		return fmt.Errorf("remove table: %w", err)
	}
	return nil
}

// Block adds elements, or replaces them with the new timeout if present.
// Single addresses go to the hash sets block4/block6, CIDRs to the interval
// sets block4net/block6net. A CIDR that overlaps a different one already in
// its set fails with ErrOverlap and changes nothing. Large inputs are split
// into messages below the netlink attribute limit, and into transactions
// that fit the socket's send buffer (each one atomic).
func (f *NFT) Block(elems []Element) error {
	b := newChangeBuilder(false)
	seen := make(map[netip.Prefix]int, len(elems))
	norm := make([]Element, 0, len(elems))
	for _, e := range elems {
		p, err := normPrefix(e.Prefix)
		if err != nil {
			return fmt.Errorf("block: %w", err)
		}
		t, err := msTimeout(e.Timeout)
		if err != nil {
			return fmt.Errorf("block %v: %w", p, err)
		}
		if i, ok := seen[p]; ok { // the last one wins
			norm[i].Timeout = t
			continue
		}
		seen[p] = len(norm)
		norm = append(norm, Element{Prefix: p, Timeout: t})
	}
	var permanent []change
	for _, e := range norm {
		s := f.blockSet(e.Prefix)
		if isSingle(e.Prefix) {
			b.add(s, nftables.SetElement{Key: e.Prefix.Addr().AsSlice(), Timeout: e.Timeout})
		} else {
			b.add(s, intervalElems(e.Prefix, e.Timeout)...)
		}
		if e.Timeout == 0 {
			permanent = append(permanent, e.asChanges(s)...)
		}
	}
	changes := b.changes()
	f.mu.Lock()
	defer f.mu.Unlock()
	replaceAll := !f.updatesTimeouts()
	if replaceAll {
		changes = addDeleteAdd(changes)
	}
	if err := f.apply(nil, changes); err != nil {
		return fmt.Errorf("block: %w", err)
	}
	// An add without a timeout leaves an existing element's timeout as it
	// was; a permanent block therefore deletes and re-adds (rare: permanent
	// blocks are few).
	if len(permanent) > 0 && !replaceAll {
		if err := f.apply(nil, permanent); err != nil {
			return fmt.Errorf("block (make permanent): %w", err)
		}
	}
	return nil
}

// addDeleteAdd turns each add into add, delete, add, glued into one
// transaction: the first add makes sure the delete finds the element, the
// last one sets the new timeout. For kernels that do not replace the
// timeout of an element added again.
func addDeleteAdd(adds []change) []change {
	out := make([]change, 0, 3*len(adds))
	for _, c := range adds {
		first, del := c, c
		first.glued, del.glued, del.del = true, true, true
		out = append(out, first, del, c)
	}
	return out
}

// asChanges is delete+add of a permanent element, glued into one transaction.
func (e Element) asChanges(s *nftables.Set) []change {
	var el []nftables.SetElement
	if isSingle(e.Prefix) {
		el = []nftables.SetElement{{Key: e.Prefix.Addr().AsSlice()}}
	} else {
		el = intervalElems(e.Prefix, 0)
	}
	n := 0
	for _, x := range el {
		n += elemBytes(x)
	}
	return []change{{set: s, del: true, elems: el, bytes: n, glued: true}, {set: s, elems: el, bytes: n}}
}

// Unblock removes prefixes; ones not present are not an error. Each prefix
// is added (a no-op if present) and deleted in the same transaction, so a
// missing one cannot fail the batch. A CIDR that is not present but
// overlaps another in its set makes that add fail; then the affected
// interval sets are read and only prefixes present are deleted.
func (f *NFT) Unblock(prefixes []netip.Prefix) error {
	norm := make([]netip.Prefix, 0, len(prefixes))
	for _, p := range prefixes {
		q, err := normPrefix(p)
		if err != nil {
			return fmt.Errorf("unblock: %w", err)
		}
		norm = append(norm, q)
	}
	slices.SortFunc(norm, func(a, b netip.Prefix) int {
		if c := a.Addr().Compare(b.Addr()); c != 0 {
			return c
		}
		return a.Bits() - b.Bits()
	})
	norm = slices.Compact(norm)
	f.mu.Lock()
	defer f.mu.Unlock()
	err := f.apply(nil, f.addThenDelete(norm))
	if errors.Is(err, ErrOverlap) {
		var present []netip.Prefix
		present, err = f.presentOf(norm)
		if err == nil {
			err = f.apply(nil, f.addThenDelete(present))
		}
	}
	if err != nil {
		return fmt.Errorf("unblock: %w", err)
	}
	return nil
}

func (f *NFT) addThenDelete(prefixes []netip.Prefix) []change {
	add, del := newChangeBuilder(false), newChangeBuilder(true)
	for _, p := range prefixes {
		s := f.blockSet(p)
		var el []nftables.SetElement
		if isSingle(p) {
			el = []nftables.SetElement{{Key: p.Addr().AsSlice()}}
		} else {
			el = intervalElems(p, 0)
		}
		add.add(s, el...)
		del.add(s, el...)
	}
	// Interleave per chunk, each add glued to its delete, so that a split
	// across transactions never leaves an added element behind.
	a, d := add.changes(), del.changes()
	out := make([]change, 0, len(a)+len(d))
	for i := range a {
		a[i].glued = true
		out = append(out, a[i], d[i])
	}
	return out
}

// presentOf returns the prefixes that are exactly present: single addresses
// always (add+delete handles them), CIDRs only if their interval set holds
// exactly that prefix.
func (f *NFT) presentOf(prefixes []netip.Prefix) ([]netip.Prefix, error) {
	have := map[netip.Prefix]bool{}
	for _, name := range []string{setBlock4Net, setBlock6Net} {
		els, err := f.dumpSet(f.sets[name])
		if err != nil {
			return nil, fmt.Errorf("list %s: %w", name, err)
		}
		for _, e := range intervalsToElements(els) {
			have[e.Prefix] = true
		}
	}
	var out []netip.Prefix
	for _, p := range prefixes {
		if isSingle(p) || have[p] {
			out = append(out, p)
		}
	}
	return out, nil
}

// SetAllow replaces the permanent allowlist (never blocked, reachable in
// lockdown) in one transaction. Prefixes contained in others are dropped.
func (f *NFT) SetAllow(prefixes []netip.Prefix) error {
	v4, v6, err := disjoint(prefixes)
	if err != nil {
		return fmt.Errorf("set allowlist: %w", err)
	}
	b := newChangeBuilder(false)
	for _, p := range v4 {
		b.add(f.sets[setAllow4], intervalElems(p, 0)...)
	}
	for _, p := range v6 {
		b.add(f.sets[setAllow6], intervalElems(p, 0)...)
	}
	changes := b.changes()
	f.mu.Lock()
	defer f.mu.Unlock()
	if txBytes(changes) > f.maxTx {
		return fmt.Errorf("set allowlist: %d prefixes do not fit one transaction", len(prefixes))
	}
	err = f.apply(func() error {
		f.conn.FlushSet(f.sets[setAllow4])
		f.conn.FlushSet(f.sets[setAllow6])
		return nil
	}, changes)
	if err != nil {
		return fmt.Errorf("set allowlist: %w", err)
	}
	return nil
}

func txBytes(changes []change) int {
	n := 0
	for _, c := range changes {
		n += msgOverhead + c.bytes
	}
	return n
}

// disjoint validates and normalises prefixes, drops those contained in
// another, and splits them by family.
func disjoint(prefixes []netip.Prefix) (v4, v6 []netip.Prefix, err error) {
	norm := make([]netip.Prefix, 0, len(prefixes))
	for _, p := range prefixes {
		q, err := normPrefix(p)
		if err != nil {
			return nil, nil, err
		}
		norm = append(norm, q)
	}
	slices.SortFunc(norm, func(a, b netip.Prefix) int {
		if c := a.Addr().Compare(b.Addr()); c != 0 {
			return c
		}
		return a.Bits() - b.Bits() // wider first
	})
	var last netip.Prefix
	for _, p := range norm {
		if last.IsValid() && last.Addr().Is4() == p.Addr().Is4() && last.Overlaps(p) {
			continue // sorted wider-first: p lies inside last
		}
		last = p
		if p.Addr().Is4() {
			v4 = append(v4, p)
		} else {
			v6 = append(v6, p)
		}
	}
	return v4, v6, nil
}

// Elements returns the kernel's view of the block sets with remaining
// timeouts (0 = permanent). For reconcile at start and for tests; never on
// a hot path: it dumps every element.
func (f *NFT) Elements() ([]Element, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []Element
	for _, name := range []string{setBlock4, setBlock6, setBlock4Net, setBlock6Net} {
		els, err := f.dumpSet(f.sets[name])
		if err != nil {
			if _, terr := f.conn.ListTableOfFamily(f.cfg.Table, nftables.TableFamilyINet); isNotFound(terr) {
				return nil, fmt.Errorf("list %s: %w", name, ErrNotEnsured)
			}
			return nil, fmt.Errorf("list %s: %w", name, err)
		}
		if f.sets[name].Interval {
			out = append(out, intervalsToElements(els)...)
			continue
		}
		for _, e := range els {
			a, ok := netip.AddrFromSlice(e.Key)
			if !ok {
				continue
			}
			out = append(out, Element{Prefix: netip.PrefixFrom(a, a.BitLen()), Timeout: remaining(e)})
		}
	}
	return out, nil
}
