package firewall

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"

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

// ensure returns whether it changed the table.
func (f *NFT) ensure() (bool, error) {
	d, err := f.check()
	if err != nil {
		return false, fmt.Errorf("ensure table: %w", err)
	}
	switch {
	case d.why == "":
		return false, nil
	case d.rebuild:
		missing := d.why == "table missing"
		if !missing {
			f.log.Warn("rebuilding nftables table", "reason", d.why)
		}
		if err := f.flush(func() error { return f.buildTable(!missing) }); err != nil {
			return false, fmt.Errorf("create table: %w", err)
		}
	default:
		f.log.Warn("repairing nftables table in place", "reason", d.why,
			"sets_added", len(d.missingSets), "chains_added", len(d.missingChains), "chains_refilled", len(d.staleChains))
		if err := f.flush(func() error { return f.repairTable(d) }); err != nil {
			return false, fmt.Errorf("repair table: %w", err)
		}
	}
	return true, nil
}

// Present reports cheaply whether the table and its chains and sets are in
// the kernel as built. It reads no set elements.
func (f *NFT) Present() (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	d, err := f.check()
	return d.why == "" && err == nil, err
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
// Plain single addresses go to the hash sets block4/block6, plain CIDRs to
// the interval sets block4net/block6net; rejecting ones to reject4...;
// protocol- and port-scoped ones to the concatenated sets block4proto,
// block4port, reject4port... (docs/firewall.md). A CIDR that overlaps a
// different one already in its set fails with ErrOverlap and changes
// nothing. Large inputs are split into messages below the netlink attribute
// limit, and into transactions that fit the socket's send buffer (each one
// atomic).
func (f *NFT) Block(elems []Element) error {
	norm, err := normElements(elems)
	if err != nil {
		return fmt.Errorf("block: %w", err)
	}
	b := newChangeBuilder(false)
	var permanent []change
	for _, e := range norm {
		s, unit := f.encode(e, e.Timeout)
		b.add(s, unit...)
		if e.Timeout == 0 {
			permanent = append(permanent, f.deleteAdd(e)...)
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

// Apply deletes del and adds (or re-times) add in one transaction: the
// kernel diff of package firewall/union, where a piece that is deleted
// may overlap one that is added (198.51.100.0/24 replaced by its two
// halves), so the deletes go first and nothing is left unblocked in
// between. Absent elements of del are not an error (as UnblockElements);
// the timeouts of del are ignored. A batch larger than MaxTxBytes is split
// into several transactions, deletes first; between them part of the
// change is visible.
func (f *NFT) Apply(del, add []Element) error {
	norm := make([]Element, 0, len(del))
	for _, e := range del {
		e.Timeout = 0
		n, err := normElement(e)
		if err != nil {
			return fmt.Errorf("apply: %w", err)
		}
		norm = append(norm, n)
	}
	adds, err := normElements(add)
	if err != nil {
		return fmt.Errorf("apply: %w", err)
	}
	b := newChangeBuilder(false)
	var permanent []change
	for _, e := range adds {
		s, unit := f.encode(e, e.Timeout)
		b.add(s, unit...)
		if e.Timeout == 0 {
			permanent = append(permanent, f.deleteAdd(e)...)
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	addChanges := b.changes()
	replaceAll := !f.updatesTimeouts()
	if replaceAll {
		addChanges = addDeleteAdd(addChanges)
	}
	build := func(del []Element) []change {
		all := append(f.addThenDelete(del), addChanges...)
		if txBytes(all) <= f.maxTx { // one transaction
			for i := range all[:max(len(all)-1, 0)] {
				all[i].glued = true
			}
		}
		return all
	}
	err = f.apply(nil, build(norm))
	if errors.Is(err, ErrOverlap) && len(norm) > 0 {
		var present []Element
		if present, err = f.presentOf(norm); err == nil {
			err = f.apply(nil, build(present))
		}
	}
	if err != nil {
		return fmt.Errorf("apply: %w", err)
	}
	if len(permanent) > 0 && !replaceAll {
		if err := f.apply(nil, permanent); err != nil {
			return fmt.Errorf("apply (make permanent): %w", err)
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

// deleteAdd is delete+add of a permanent element, glued into one transaction.
func (f *NFT) deleteAdd(e Element) []change {
	s, el := f.encode(e, 0)
	n := 0
	for _, x := range el {
		n += elemBytes(x)
	}
	return []change{{set: s, del: true, elems: el, bytes: n, glued: true}, {set: s, elems: el, bytes: n}}
}

// Unblock removes plain blocks (no scope, action drop) of prefixes; ones
// not present are not an error. It is UnblockElements of plain elements.
func (f *NFT) Unblock(prefixes []netip.Prefix) error {
	elems := make([]Element, len(prefixes))
	for i, p := range prefixes {
		elems[i] = Element{Prefix: p}
	}
	return f.UnblockElements(elems)
}

// UnblockElements removes elements, each exactly as given (prefix, scope
// and action; the timeout is ignored); ones not present are not an error.
// Each is added (a no-op if present) and deleted in the same transaction,
// so a missing one cannot fail the batch. A CIDR that is not present but
// overlaps another in its set makes that add fail; then the affected
// interval sets are read and only elements present are deleted.
func (f *NFT) UnblockElements(elems []Element) error {
	norm := make([]Element, 0, len(elems))
	seen := make(map[elemKey]bool, len(elems))
	for _, e := range elems {
		e.Timeout = 0
		n, err := normElement(e)
		if err != nil {
			return fmt.Errorf("unblock: %w", err)
		}
		if !seen[n.key()] {
			seen[n.key()] = true
			norm = append(norm, n)
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	err := f.apply(nil, f.addThenDelete(norm))
	if errors.Is(err, ErrOverlap) {
		var present []Element
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

func (f *NFT) addThenDelete(elems []Element) []change {
	add, del := newChangeBuilder(false), newChangeBuilder(true)
	for _, e := range elems {
		s, el := f.encode(e, 0)
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

// presentOf returns the elements that are exactly present: plain single
// addresses always (add+delete handles them), the others only if their
// interval set holds exactly that element.
func (f *NFT) presentOf(elems []Element) ([]Element, error) {
	have := map[elemKey]bool{}
	dumped := map[string]bool{}
	for _, e := range elems {
		name := f.blockSet(e).Name
		if !f.sets[name].Interval || dumped[name] {
			continue
		}
		dumped[name] = true
		els, err := f.setElements(name)
		if err != nil {
			return nil, err
		}
		for _, x := range els {
			have[x.key()] = true
		}
	}
	var out []Element
	for _, e := range elems {
		if !f.blockSet(e).Interval || have[e.key()] {
			out = append(out, e)
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

// Elements returns the kernel's view of the plain block sets (block4,
// block6, block4net, block6net: no scope, action drop) with remaining
// timeouts (0 = permanent). For reconcile at start and for tests; never on
// a hot path: it dumps every element. AllElements includes the scoped and
// rejecting sets.
func (f *NFT) Elements() ([]Element, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.elementsOf([]string{setBlock4, setBlock6, setBlock4Net, setBlock6Net})
}

// AllElements is Elements of every block set: plain, protocol- and
// port-scoped, drop and reject.
func (f *NFT) AllElements() ([]Element, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var names []string
	for _, a := range []Action{Drop, Reject} {
		for _, v6 := range []bool{false, true} {
			for _, k := range blockKinds {
				names = append(names, blockSetName(a, v6, k.suffix))
			}
		}
	}
	return f.elementsOf(names)
}

func (f *NFT) elementsOf(names []string) ([]Element, error) {
	var out []Element
	for _, name := range names {
		els, err := f.setElements(name)
		if err != nil {
			return nil, err
		}
		out = append(out, els...)
	}
	return out, nil
}

// setElements dumps one block set and decodes its elements. Called with
// f.mu held.
func (f *NFT) setElements(name string) ([]Element, error) {
	s := f.sets[name]
	els, err := f.dumpSet(s)
	if err != nil {
		if _, terr := f.conn.ListTableOfFamily(f.cfg.Table, nftables.TableFamilyINet); isNotFound(terr) {
			return nil, fmt.Errorf("list %s: %w", name, ErrNotEnsured)
		}
		return nil, fmt.Errorf("list %s: %w", name, err)
	}
	a := Drop
	if strings.HasPrefix(name, "reject") {
		a = Reject
	}
	v6 := s.KeyType.Bytes >= 16
	var out []Element
	switch {
	case s.Concatenation:
		return scopedToElements(els, v6, a), nil
	case s.Interval:
		out = intervalsToElements(els)
	default:
		for _, e := range els {
			if p, ok := netip.AddrFromSlice(e.Key); ok {
				out = append(out, Element{Prefix: netip.PrefixFrom(p, p.BitLen()), Timeout: remaining(e)})
			}
		}
	}
	for i := range out {
		out[i].Action = a
	}
	return out, nil
}
