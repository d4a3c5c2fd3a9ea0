package enforce

import (
	"net/netip"

	"github.com/parryhq/parry/agent/api"
)

// maxPieces bounds what one feed entry is carved into; an entry that
// would need more is refused with the guard's code instead.
const maxPieces = 4096

// holes are the ranges carved out of a broad feed entry: the allowlist,
// the host's own addresses and the ranges parry never blocks.
func (g *Guard) holes() []netip.Prefix {
	out := make([]netip.Prefix, 0, len(g.Allow)+len(g.Own)+len(reserved))
	out = append(out, g.Allow...)
	for _, o := range g.Own {
		out = append(out, netip.PrefixFrom(o, o.BitLen()))
	}
	for _, r := range reserved {
		out = append(out, r.p)
	}
	return out
}

// carvable reports whether the guard refused a prefix for what overlaps
// it (rather than for the prefix itself: invalid, too broad), so that
// the rest of it may be blocked.
func carvable(code string) bool {
	switch code {
	case api.CodeAllowlisted, api.CodeOwnAddress, api.CodeLoopback, api.CodeLinkLocal, api.CodeMulticast,
		api.CodeUnspecified, api.CodeInvalidTarget:
		return true
	}
	return false
}

// carveHoles returns p minus holes: the fewest prefixes that cover p outside
// every hole, in address order (a /8 minus a /24 is 16 prefixes). ok is
// false when that takes more than maxPieces.
func carveHoles(p netip.Prefix, holes []netip.Prefix) ([]netip.Prefix, bool) {
	var in []netip.Prefix
	for _, h := range holes {
		if h.Overlaps(p) {
			in = append(in, h)
		}
	}
	out, ok := carveInto(nil, p, in)
	return out, ok
}

func carveInto(out []netip.Prefix, p netip.Prefix, holes []netip.Prefix) ([]netip.Prefix, bool) {
	var in []netip.Prefix
	for _, h := range holes {
		if !h.Overlaps(p) {
			continue
		}
		if h.Bits() <= p.Bits() { // the hole covers p: nothing of it is blocked
			return out, true
		}
		in = append(in, h)
	}
	if len(in) == 0 {
		if len(out) >= maxPieces {
			return out, false
		}
		return append(out, p), true
	}
	lo := netip.PrefixFrom(p.Addr(), p.Bits()+1)
	hi := netip.PrefixFrom(NextPrefixAddr(p.Addr(), p.Bits()+1), p.Bits()+1)
	out, ok := carveInto(out, lo, in)
	if !ok {
		return out, false
	}
	return carveInto(out, hi, in)
}
