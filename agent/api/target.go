package api

import (
	"fmt"
	"net/netip"
	"strings"
)

// ParseTarget parses one block target: an IPv4 or IPv6 address (a /32 or
// /128) or a CIDR prefix. Host bits in a CIDR are cleared (198.51.100.7/24
// becomes 198.51.100.0/24); IPv4-mapped IPv6 addresses become IPv4; zones
// are refused.
func ParseTarget(s string) (netip.Prefix, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return netip.Prefix{}, fmt.Errorf("empty target")
	}
	if len(s) > 64 {
		return netip.Prefix{}, fmt.Errorf("target %.20q...: too long for an address", s)
	}
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return netip.Prefix{}, fmt.Errorf("target %q: not an IP address or CIDR", s)
		}
		a, bits := p.Addr(), p.Bits()
		if a.Is4In6() {
			if bits < 96 {
				return netip.Prefix{}, fmt.Errorf("target %q: IPv4-mapped prefix shorter than /96", s)
			}
			a, bits = a.Unmap(), bits-96
		}
		return netip.PrefixFrom(a, bits).Masked(), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("target %q: not an IP address or CIDR", s)
	}
	if a.Zone() != "" {
		return netip.Prefix{}, fmt.Errorf("target %q: zones are not allowed", s)
	}
	a = a.Unmap()
	return netip.PrefixFrom(a, a.BitLen()), nil
}

// FormatTarget renders a prefix the way users type it: single addresses
// without their /32 or /128.
func FormatTarget(p netip.Prefix) string {
	if p.IsSingleIP() {
		return p.Addr().String()
	}
	return p.String()
}
