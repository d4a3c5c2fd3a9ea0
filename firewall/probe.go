package firewall

import (
	"fmt"
	"net/netip"
	"time"
)

// probePrefix is the element the timeout-update probe adds to lockallow4
// for a moment: 255.255.255.255 is never a valid source address (the kernel
// drops it as a martian before our hooks), so accepting it changes nothing.
var probePrefix = netip.MustParsePrefix("255.255.255.255/32")

// updatesTimeouts reports whether the kernel replaces the timeout of an
// element that is added again (Linux 6.10 and later). Older kernels keep
// the old timeout silently, so Block then sends add+delete+add. The answer
// is probed once per NFT; on a probe error it assumes the old behaviour
// (correct everywhere, three times the messages) and probes again next time.
// Called with f.mu held.
func (f *NFT) updatesTimeouts() bool {
	if f.probed {
		return f.canUpdate
	}
	ok, err := f.probeTimeoutUpdate()
	if err != nil {
		f.log.Warn("probing timeout replacement failed; using delete+add", "err", err)
		return false
	}
	f.probed, f.canUpdate = true, ok
	if !ok {
		f.log.Info("kernel does not replace element timeouts on re-add; Block uses delete+add")
	}
	return ok
}

func (f *NFT) probeTimeoutUpdate() (bool, error) {
	s := f.sets[setLockAllow4]
	short, long := intervalElems(probePrefix, 10*time.Second), intervalElems(probePrefix, time.Hour)
	n := elemBytes(short[0])
	fresh := addDeleteAdd([]change{{set: s, elems: short, bytes: n}})
	if err := f.apply(nil, fresh); err != nil {
		return false, fmt.Errorf("add probe: %w", err)
	}
	if err := f.apply(nil, []change{{set: s, elems: long, bytes: n}}); err != nil {
		return false, fmt.Errorf("re-add probe: %w", err)
	}
	els, err := f.dumpSet(s)
	if err != nil {
		return false, fmt.Errorf("read probe: %w", err)
	}
	var timeout time.Duration
	for _, e := range els {
		if a, ok := netip.AddrFromSlice(e.Key); ok && a == probePrefix.Addr() && !e.IntervalEnd {
			timeout = e.Timeout
		}
	}
	del := []change{{set: s, elems: short, bytes: n, glued: true}, {set: s, del: true, elems: short, bytes: n}}
	if err := f.apply(nil, del); err != nil {
		return false, fmt.Errorf("remove probe: %w", err)
	}
	return timeout == time.Hour, nil
}
