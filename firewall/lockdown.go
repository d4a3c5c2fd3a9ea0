package firewall

import (
	"fmt"
	"net/netip"
	"time"

	"github.com/google/nftables"
)

// lockAllowGrace keeps a lockdown's --allow prefixes a little longer than
// the lockdown itself, so that at expiry the allow set can never vanish
// before the drop set (an accept after the lockdown has ended is harmless).
const lockAllowGrace = time.Second

var (
	all4 = netip.MustParsePrefix("0.0.0.0/0")
	all6 = netip.MustParsePrefix("::/0")
)

func (f *NFT) lockdownSets() []*nftables.Set {
	return []*nftables.Set{
		f.sets[setLockdown4], f.sets[setLockdown6],
		f.sets[setLockAllow4], f.sets[setLockAllow6],
		f.sets[setIsolate4], f.sets[setIsolate6],
	}
}

// Lockdown starts or replaces a lockdown, in one transaction. Until the
// kernel expires it (Timeout) or Release ends it, input and forward drop
// every packet whose source is neither loopback nor in the permanent or
// the lockdown's allowlist — established connections included. With
// Isolate, output drops every packet not to loopback or an allowlisted
// address. ICMPv6 neighbour discovery stays open both ways.
func (f *NFT) Lockdown(l Lockdown) error {
	if l.Timeout <= 0 {
		return fmt.Errorf("lockdown: %w: a lockdown needs a timeout > 0, got %v", ErrInvalidTimeout, l.Timeout)
	}
	t, err := msTimeout(l.Timeout)
	if err != nil {
		return fmt.Errorf("lockdown: %w", err)
	}
	v4, v6, err := disjoint(l.Allow)
	if err != nil {
		return fmt.Errorf("lockdown allow: %w", err)
	}
	b := newChangeBuilder(false)
	b.add(f.sets[setLockdown4], intervalElems(all4, t)...)
	b.add(f.sets[setLockdown6], intervalElems(all6, t)...)
	if l.Isolate {
		b.add(f.sets[setIsolate4], intervalElems(all4, t)...)
		b.add(f.sets[setIsolate6], intervalElems(all6, t)...)
	}
	for _, p := range v4 {
		b.add(f.sets[setLockAllow4], intervalElems(p, t+lockAllowGrace)...)
	}
	for _, p := range v6 {
		b.add(f.sets[setLockAllow6], intervalElems(p, t+lockAllowGrace)...)
	}
	changes := b.changes()
	f.mu.Lock()
	defer f.mu.Unlock()
	if txBytes(changes) > f.maxTx {
		return fmt.Errorf("lockdown: %d allow prefixes do not fit one transaction", len(l.Allow))
	}
	err = f.apply(func() error {
		for _, s := range f.lockdownSets() {
			f.conn.FlushSet(s)
		}
		return nil
	}, changes)
	if err != nil {
		return fmt.Errorf("lockdown: %w", err)
	}
	return nil
}

// Release ends a lockdown now; no lockdown is not an error.
func (f *NFT) Release() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	err := f.flush(func() error {
		for _, s := range f.lockdownSets() {
			f.conn.FlushSet(s)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("release lockdown: %w", err)
	}
	return nil
}

// LockdownState reads the current lockdown from the kernel: whether one is
// active, its remaining time, whether it isolates, and its extra allowlist.
// It reads only the small lockdown sets.
func (f *NFT) LockdownState() (Lockdown, bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	read := func(name string) ([]Element, error) {
		els, err := f.dumpSet(f.sets[name])
		if err != nil {
			if _, terr := f.conn.ListTableOfFamily(f.cfg.Table, nftables.TableFamilyINet); isNotFound(terr) {
				err = ErrNotEnsured
			}
			return nil, fmt.Errorf("list %s: %w", name, err)
		}
		return intervalsToElements(els), nil
	}
	var l Lockdown
	for _, name := range []string{setLockdown4, setLockdown6} {
		els, err := read(name)
		if err != nil {
			return Lockdown{}, false, err
		}
		for _, e := range els {
			l.Timeout = max(l.Timeout, e.Timeout)
		}
	}
	if l.Timeout == 0 {
		return Lockdown{}, false, nil
	}
	for _, name := range []string{setIsolate4, setIsolate6} {
		els, err := read(name)
		if err != nil {
			return Lockdown{}, false, err
		}
		l.Isolate = l.Isolate || len(els) > 0
	}
	for _, name := range []string{setLockAllow4, setLockAllow6} {
		els, err := read(name)
		if err != nil {
			return Lockdown{}, false, err
		}
		for _, e := range els {
			l.Allow = append(l.Allow, e.Prefix)
		}
	}
	return l, true, nil
}
