package firewall

import (
	"errors"
	"fmt"
	"math/big"
	"net/netip"
	"slices"
	"time"

	"github.com/google/nftables"
	"golang.org/x/sys/unix"
)

// Limits of one netlink message and one transaction; see docs/firewall.md.
const (
	// maxListBytes bounds the encoded element list of one NEWSETELEM or
	// DELSETELEM message. The list is a netlink attribute whose length is a
	// uint16: past 65,535 bytes google/nftables silently wraps the length,
	// so we stay well below it.
	maxListBytes = 60 << 10
	// DefaultMaxTxBytes is the default bound on the bytes sent in one
	// transaction (one sendmsg). It must fit the socket send buffer:
	// ConnOptions raises that to sendBufferBytes.
	DefaultMaxTxBytes = 8 << 20
	// minTxBytes is the floor of the adaptive bound after EMSGSIZE.
	minTxBytes = 64 << 10
	// msgOverhead is a generous bound on a NEWSETELEM message without its
	// element list (netlink and nfgen headers, table and set names, set id).
	msgOverhead = 16 + 4 + 2*(4+256) + 8 + 4
)

// change is one message's worth of work: add or delete elements of a set.
// Interval start/end pairs are never split between changes.
type change struct {
	set   *nftables.Set
	del   bool
	elems []nftables.SetElement
	bytes int  // estimate of the encoded element list
	glued bool // must go in the same transaction as the next change
}

// elemBytes estimates the encoded size of one element, as makeElemList
// encodes it (attribute headers, 4-byte alignment).
func elemBytes(e nftables.SetElement) int {
	n := 4 + 4 + 4 + (len(e.Key)+3)&^3 // element, key nest, key value
	if e.IntervalEnd {
		n += 8
	}
	if e.Timeout != 0 {
		n += 12
	}
	if len(e.KeyEnd) > 0 {
		n += 4 + 4 + (len(e.KeyEnd)+3)&^3
	}
	return n
}

// normPrefix validates p and returns it masked, with IPv4-mapped IPv6
// prefixes turned into IPv4.
func normPrefix(p netip.Prefix) (netip.Prefix, error) {
	if !p.IsValid() || p.Addr().Zone() != "" {
		return netip.Prefix{}, fmt.Errorf("%w: %v", ErrInvalidPrefix, p)
	}
	if a := p.Addr(); a.Is4In6() {
		if p.Bits() < 96 {
			return netip.Prefix{}, fmt.Errorf("%w: %v (IPv4-mapped prefix shorter than /96)", ErrInvalidPrefix, p)
		}
		p = netip.PrefixFrom(a.Unmap(), p.Bits()-96)
	}
	return p.Masked(), nil
}

// isSingle reports whether p is one address (it goes into a hash set).
func isSingle(p netip.Prefix) bool { return p.Bits() == p.Addr().BitLen() }

// lastAddr is the highest address in p.
func lastAddr(p netip.Prefix) netip.Addr {
	b := p.Addr().AsSlice()
	for i := p.Bits(); i < len(b)*8; i++ {
		b[i/8] |= 0x80 >> (i % 8)
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}

// intervalElems encodes a prefix as an interval: a start element carrying the
// timeout and, unless the prefix reaches the top of the address space, an
// end element (exclusive) flagged IntervalEnd.
func intervalElems(p netip.Prefix, timeout time.Duration) []nftables.SetElement {
	out := []nftables.SetElement{{Key: p.Addr().AsSlice(), Timeout: timeout}}
	if end := lastAddr(p).Next(); end.IsValid() {
		out = append(out, nftables.SetElement{Key: end.AsSlice(), IntervalEnd: true})
	}
	return out
}

// elemKey is what identifies an element in the kernel: all but its timeout.
type elemKey struct {
	prefix netip.Prefix
	proto  uint8
	port   uint16
	action Action
}

func (e Element) key() elemKey { return elemKey{e.Prefix, e.Proto, e.Port, e.Action} }

// hasPorts reports whether an IP protocol has destination ports at the
// offset `th dport` reads (2 bytes at byte 2 of the transport header).
func hasPorts(proto uint8) bool {
	switch proto {
	case unix.IPPROTO_TCP, unix.IPPROTO_UDP, unix.IPPROTO_SCTP, unix.IPPROTO_DCCP, unix.IPPROTO_UDPLITE:
		return true
	}
	return false
}

// normElement validates e and returns it with its prefix normalised and its
// timeout in milliseconds.
func normElement(e Element) (Element, error) {
	p, err := normPrefix(e.Prefix)
	if err != nil {
		return Element{}, err
	}
	if e.Action != Drop && e.Action != Reject {
		return Element{}, fmt.Errorf("%w: %v", ErrInvalidScope, e.Action)
	}
	if e.Port != 0 && !hasPorts(e.Proto) {
		return Element{}, fmt.Errorf("%w: port %d needs tcp, udp, sctp, dccp or udplite (proto %d)", ErrInvalidScope, e.Port, e.Proto)
	}
	t, err := msTimeout(e.Timeout)
	if err != nil {
		return Element{}, fmt.Errorf("%v: %w", p, err)
	}
	return Element{Prefix: p, Timeout: t, Proto: e.Proto, Port: e.Port, Action: e.Action}, nil
}

// normElements normalises a batch; of elements with the same key the last
// one's timeout wins.
func normElements(elems []Element) ([]Element, error) {
	seen := make(map[elemKey]int, len(elems))
	norm := make([]Element, 0, len(elems))
	for _, e := range elems {
		n, err := normElement(e)
		if err != nil {
			return nil, err
		}
		if i, ok := seen[n.key()]; ok {
			norm[i].Timeout = n.Timeout
			continue
		}
		seen[n.key()] = len(norm)
		norm = append(norm, n)
	}
	return norm, nil
}

// kindSuffix is the kind of block set a normalised element goes to.
func kindSuffix(e Element) string {
	switch {
	case e.Port != 0:
		return "port"
	case e.Proto != 0:
		return "proto"
	case isSingle(e.Prefix):
		return ""
	}
	return "net"
}

// blockSet picks the set for a normalised element.
func (f *NFT) blockSet(e Element) *nftables.Set {
	return f.sets[blockSetName(e.Action, e.Prefix.Addr().Is6(), kindSuffix(e))]
}

// encode returns the set of a normalised element and its kernel elements
// with timeout t: one hash element, an rbtree interval's start and end (a
// unit never split between messages), or one concatenated range element
// (key and inclusive key end). A single address gets a key end equal to
// its key: the kernel would accept it without one, but nft then lists such
// elements as ranges spanning two of them.
func (f *NFT) encode(e Element, t time.Duration) (*nftables.Set, []nftables.SetElement) {
	s := f.blockSet(e)
	switch {
	case e.Proto != 0:
		return s, []nftables.SetElement{{Key: scopeKey(e.Prefix.Addr(), e), KeyEnd: scopeKey(lastAddr(e.Prefix), e), Timeout: t}}
	case isSingle(e.Prefix):
		return s, []nftables.SetElement{{Key: e.Prefix.Addr().AsSlice(), Timeout: t}}
	}
	return s, intervalElems(e.Prefix, t)
}

// scopeKey is a concatenated key: the address, the protocol byte and, for a
// port set, the port in network order, each field padded to 4 bytes.
func scopeKey(a netip.Addr, e Element) []byte {
	k := append(a.AsSlice(), e.Proto, 0, 0, 0)
	if e.Port != 0 {
		k = append(k, byte(e.Port>>8), byte(e.Port), 0, 0)
	}
	return k
}

// scopedToElements decodes the elements of a concatenated set.
func scopedToElements(els []nftables.SetElement, v6 bool, a Action) []Element {
	n := 4
	if v6 {
		n = 16
	}
	var out []Element
	for _, el := range els {
		if len(el.Key) < n+4 {
			continue
		}
		end := el.KeyEnd
		if len(end) < n {
			end = el.Key
		}
		first, ok1 := netip.AddrFromSlice(el.Key[:n])
		last, ok2 := netip.AddrFromSlice(end[:n])
		if !ok1 || !ok2 || last.Less(first) {
			continue
		}
		e := Element{Proto: el.Key[n], Action: a, Timeout: remaining(el)}
		if len(el.Key) >= n+8 {
			e.Port = uint16(el.Key[n+4])<<8 | uint16(el.Key[n+5])
		}
		for _, p := range prefixesOfRange(first, last) {
			e.Prefix = p
			out = append(out, e)
		}
	}
	return out
}

// msTimeout converts a timeout to what the kernel stores (milliseconds),
// rounding a positive sub-millisecond timeout up so it is not permanent.
func msTimeout(d time.Duration) (time.Duration, error) {
	if d < 0 {
		return 0, fmt.Errorf("%w: %v", ErrInvalidTimeout, d)
	}
	if d > 0 && d < time.Millisecond {
		return time.Millisecond, nil
	}
	return d.Truncate(time.Millisecond), nil
}

// changeBuilder accumulates per-set element lists and cuts them into
// changes of at most maxListBytes.
type changeBuilder struct {
	order   []*nftables.Set
	pending map[*nftables.Set]*change
	out     []change
	del     bool
}

func newChangeBuilder(del bool) *changeBuilder {
	return &changeBuilder{pending: make(map[*nftables.Set]*change), del: del}
}

// add appends one unit (an address, or an interval's start+end).
func (b *changeBuilder) add(s *nftables.Set, unit ...nftables.SetElement) {
	n := 0
	for _, e := range unit {
		n += elemBytes(e)
	}
	fresh := func() change {
		return change{set: s, del: b.del, elems: make([]nftables.SetElement, 0, maxListBytes/n+2)}
	}
	c := b.pending[s]
	if c == nil {
		c = new(change)
		*c = fresh()
		b.pending[s] = c
		b.order = append(b.order, s)
	}
	if c.bytes+n > maxListBytes && len(c.elems) > 0 {
		b.out = append(b.out, *c)
		*c = fresh()
	}
	c.elems = append(c.elems, unit...)
	c.bytes += n
}

func (b *changeBuilder) changes() []change {
	for _, s := range b.order {
		if c := b.pending[s]; len(c.elems) > 0 {
			b.out = append(b.out, *c)
		}
	}
	return b.out
}

// apply sends changes in as few transactions as fit f.maxTx; each
// transaction is atomic. pre, if not nil, queues messages that must lead the
// first transaction. On EMSGSIZE (the batch did not fit the socket send
// buffer; nothing was applied) it halves the bound and retries.
func (f *NFT) apply(pre func() error, changes []change) error {
	start, first := 0, true
	for first || start < len(changes) {
		end, size := start, 0
		for end < len(changes) && (end == start || changes[end-1].glued || size+msgOverhead+changes[end].bytes <= f.maxTx) {
			size += msgOverhead + changes[end].bytes
			end++
		}
		withPre := first && pre != nil
		err := f.flush(func() error {
			if withPre {
				if err := pre(); err != nil {
					return err
				}
			}
			return f.queue(changes[start:end])
		})
		if errors.Is(err, unix.EMSGSIZE) && end-start > 1 && f.maxTx > minTxBytes {
			f.maxTx = max(f.maxTx/2, minTxBytes)
			f.log.Warn("netlink batch too large for the socket send buffer; splitting smaller", "max_tx_bytes", f.maxTx)
			continue
		}
		if err != nil {
			return err
		}
		start, first = end, false
	}
	return nil
}

func (f *NFT) queue(changes []change) error {
	for _, c := range changes {
		var err error
		if c.del {
			err = f.conn.SetDeleteElements(c.set, c.elems)
		} else {
			err = f.conn.SetAddElements(c.set, c.elems)
		}
		if err != nil {
			return fmt.Errorf("encode %s elements: %w", c.set.Name, err)
		}
	}
	return nil
}

// flush queues messages with fill and sends them as one transaction. If fill
// fails, the queued messages are discarded by an empty-but-harmless flush.
func (f *NFT) flush(fill func() error) error {
	if err := fill(); err != nil {
		f.discard()
		return err
	}
	if err := f.conn.Flush(); err != nil {
		if errors.Is(err, unix.ENOBUFS) || errors.Is(err, unix.EPERM) {
			// Flush returned without reading every acknowledgement: the
			// lasting socket is out of step and would hang or mismatch
			// the next request. Drop it; google/nftables then dials a
			// fresh socket (with the same options) for each operation.
			f.log.Error("netlink socket out of step after a failed batch; closing the lasting connection", "err", err)
			_ = f.conn.CloseLasting()
		}
		return mapKernelErr(err)
	}
	f.noteOwn()
	return nil
}

// discard drops queued messages. google/nftables has no API for that, but
// Flush clears the buffer whatever happens; an invalid set name makes the
// batch fail in the kernel before anything is committed.
func (f *NFT) discard() {
	_ = f.conn.SetAddElements(&nftables.Set{Table: f.table, Name: "\x01discard"}, []nftables.SetElement{{Key: []byte{0, 0, 0, 0}}})
	_ = f.conn.Flush()
}

// batchError is the errors of one failed transaction (google/nftables
// joins one per message, often dozens of the same errno): it prints the
// first and a count, and errors.Is still sees them all.
type batchError struct{ errs []error }

func (e *batchError) Error() string {
	if len(e.errs) == 1 {
		return e.errs[0].Error()
	}
	return fmt.Sprintf("%v (and %d more errors in the same batch)", e.errs[0], len(e.errs)-1)
}

func (e *batchError) Unwrap() []error { return e.errs }

func mapKernelErr(err error) error {
	var joined interface{ Unwrap() []error }
	if errors.As(err, &joined) {
		if leaves := flatten(joined.(error), nil); len(leaves) > 1 {
			err = &batchError{errs: leaves}
		}
	}
	switch {
	case errors.Is(err, unix.ENOTEMPTY), errors.Is(err, unix.EEXIST):
		return fmt.Errorf("%w: %w", ErrOverlap, err)
	case errors.Is(err, unix.ENOENT):
		return fmt.Errorf("%w: %w", ErrNotEnsured, err)
	}
	return err
}

// flatten collects the leaves of nested errors.Join trees (google/nftables
// joins acknowledgements one at a time, so they nest).
func flatten(err error, out []error) []error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		for _, e := range j.Unwrap() {
			out = flatten(e, out)
		}
		return out
	}
	return append(out, err)
}

func isNotFound(err error) bool { return errors.Is(err, unix.ENOENT) }

// prefixesOfRange returns the CIDRs that exactly cover [first, last].
func prefixesOfRange(first, last netip.Addr) []netip.Prefix {
	var out []netip.Prefix
	bits := first.BitLen()
	one := big.NewInt(1)
	lo, hi := new(big.Int).SetBytes(first.AsSlice()), new(big.Int).SetBytes(last.AsSlice())
	for lo.Cmp(hi) <= 0 {
		// largest block aligned at lo that does not pass hi
		size := bits
		for size > 0 {
			step := new(big.Int).Lsh(one, uint(bits-size+1))
			if new(big.Int).Mod(lo, step).Sign() != 0 {
				break
			}
			if new(big.Int).Sub(new(big.Int).Add(lo, step), one).Cmp(hi) > 0 {
				break
			}
			size--
		}
		b := lo.FillBytes(make([]byte, bits/8))
		a, _ := netip.AddrFromSlice(b)
		out = append(out, netip.PrefixFrom(a, size))
		lo.Add(lo, new(big.Int).Lsh(one, uint(bits-size)))
	}
	return out
}

// intervalsToElements pairs the start and end elements of an interval set
// dump into prefixes. Each start's interval ends at the next end element
// above it (exclusive), or at the top of the address space.
func intervalsToElements(elems []nftables.SetElement) []Element {
	type start struct {
		a  netip.Addr
		el nftables.SetElement
	}
	var starts []start
	var ends []netip.Addr
	for _, e := range elems {
		a, ok := netip.AddrFromSlice(e.Key)
		if !ok {
			continue
		}
		if e.IntervalEnd {
			ends = append(ends, a)
		} else {
			starts = append(starts, start{a, e})
		}
	}
	slices.SortFunc(starts, func(x, y start) int { return x.a.Compare(y.a) })
	slices.SortFunc(ends, func(x, y netip.Addr) int { return x.Compare(y) })
	var out []Element
	for _, s := range starts {
		last := netip.PrefixFrom(s.a, 0).Masked()
		last = netip.PrefixFrom(lastAddr(last), s.a.BitLen()) // top of the address space
		i, _ := slices.BinarySearchFunc(ends, s.a, func(e, t netip.Addr) int {
			if e.Compare(t) <= 0 {
				return -1
			}
			return 1
		})
		lastA := last.Addr()
		if i < len(ends) {
			lastA = ends[i].Prev()
		}
		for _, p := range prefixesOfRange(s.a, lastA) {
			out = append(out, Element{Prefix: p, Timeout: remaining(s.el)})
		}
	}
	return out
}

func remaining(e nftables.SetElement) time.Duration {
	if e.Timeout == 0 {
		return 0
	}
	if e.Expires <= 0 {
		return time.Millisecond // expired, not yet collected
	}
	return e.Expires
}
