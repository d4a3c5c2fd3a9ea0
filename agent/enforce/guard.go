package enforce

import (
	"fmt"
	"net"
	"net/netip"

	"github.com/parryhq/parry/agent/api"
)

// Guard refuses decisions that would cut the host off or block too much:
// loopback, link-local, multicast and unspecified addresses, the default
// routes, prefixes broader than the configured minimum, anything that
// overlaps the allowlist, and the host's own addresses. It is pure: the own
// addresses are handed in (see HostAddrs).
type Guard struct {
	Allow []netip.Prefix // never blocked
	Own   []netip.Addr   // the host's addresses
	MinV4 int            // shortest IPv4 prefix allowed (default 16)
	MinV6 int            // shortest IPv6 prefix allowed (default 32)
}

// Check returns nil when p may be blocked, else a refusal with a stable code.
func (g *Guard) Check(p netip.Prefix) *api.Error {
	a := p.Addr()
	t := api.FormatTarget(p)
	switch {
	case !p.IsValid():
		return api.Errorf(api.CodeInvalidTarget, "invalid target")
	case p.Bits() == 0:
		return api.Errorf(api.CodeTooBroad, "%s would block the whole address family", t)
	}
	for _, c := range reserved {
		if c.p.Overlaps(p) {
			return api.Errorf(c.code, "%s overlaps %s (%s), which parry never blocks", t, c.p, c.what)
		}
	}
	switch {
	case a.Is4() && p.Bits() < g.MinV4:
		return api.Errorf(api.CodeTooBroad, "%s is broader than the minimum prefix /%d (min_prefix_v4 in the config)", t, g.MinV4)
	case a.Is6() && p.Bits() < g.MinV6:
		return api.Errorf(api.CodeTooBroad, "%s is broader than the minimum prefix /%d (min_prefix_v6 in the config)", t, g.MinV6)
	}
	for _, al := range g.Allow {
		if al.Overlaps(p) {
			return api.Errorf(api.CodeAllowlisted, "%s overlaps the allowlist entry %s", t, api.FormatTarget(al))
		}
	}
	for _, o := range g.Own {
		if p.Contains(o) {
			return api.Errorf(api.CodeOwnAddress, "%s contains this host's own address %s", t, o)
		}
	}
	return nil
}

type reservedNet struct {
	p    netip.Prefix
	code string
	what string
}

var reserved = []reservedNet{
	{netip.MustParsePrefix("0.0.0.0/8"), api.CodeUnspecified, "this network"},
	{netip.MustParsePrefix("127.0.0.0/8"), api.CodeLoopback, "loopback"},
	{netip.MustParsePrefix("169.254.0.0/16"), api.CodeLinkLocal, "link-local"},
	{netip.MustParsePrefix("224.0.0.0/4"), api.CodeMulticast, "multicast"},
	{netip.MustParsePrefix("255.255.255.255/32"), api.CodeMulticast, "broadcast"},
	{netip.MustParsePrefix("::/128"), api.CodeUnspecified, "unspecified"},
	{netip.MustParsePrefix("::1/128"), api.CodeLoopback, "loopback"},
	{netip.MustParsePrefix("::ffff:0:0/96"), api.CodeInvalidTarget, "IPv4-mapped; block the IPv4 address instead"},
	{netip.MustParsePrefix("fe80::/10"), api.CodeLinkLocal, "link-local"},
	{netip.MustParsePrefix("ff00::/8"), api.CodeMulticast, "multicast"},
}

// HostAddrs reads the host's own addresses from the kernel (all interfaces
// of the current network namespace).
func HostAddrs() ([]netip.Addr, error) {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return nil, fmt.Errorf("read interface addresses: %w", err)
	}
	var out []netip.Addr
	for _, a := range addrs {
		n, ok := a.(*net.IPNet)
		if !ok {
			continue
		}
		ip, ok := netip.AddrFromSlice(n.IP)
		if !ok {
			continue
		}
		out = append(out, ip.Unmap())
	}
	return out, nil
}
