package enforce

import (
	"fmt"
	"net/netip"
	"testing"
)

func TestCarveHoles(t *testing.T) {
	for _, c := range []struct {
		p     string
		holes []string
		want  string
	}{
		{"10.0.0.0/8", nil, "[10.0.0.0/8]"},
		{"10.0.0.0/22", []string{"10.0.1.0/24"}, "[10.0.0.0/24 10.0.2.0/23]"},
		{"10.0.0.0/24", []string{"10.0.0.0/16"}, "[]"},
		{"10.0.0.0/30", []string{"10.0.0.1/32", "10.0.0.2/32"}, "[10.0.0.0/32 10.0.0.3/32]"},
		{"2001:db8::/62", []string{"2001:db8:0:2::/64", "10.0.0.0/8"}, "[2001:db8::/63 2001:db8:0:3::/64]"},
	} {
		var holes []netip.Prefix
		for _, h := range c.holes {
			holes = append(holes, netip.MustParsePrefix(h))
		}
		got, ok := carveHoles(netip.MustParsePrefix(c.p), holes)
		if !ok || fmt.Sprint(got) != c.want {
			t.Errorf("carveHoles %s - %v: %v %v, want %s", c.p, c.holes, got, ok, c.want)
		}
	}
	got, _ := carveHoles(netip.MustParsePrefix("10.0.0.0/8"), []netip.Prefix{netip.MustParsePrefix("10.9.9.0/24")})
	if len(got) != 16 {
		t.Errorf("a /8 minus a /24: %d pieces, want 16", len(got))
	}
	var many []netip.Prefix
	for i := range 5000 {
		many = append(many, netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i >> 8), byte(i), 1}), 32))
	}
	if _, ok := carveHoles(netip.MustParsePrefix("10.0.0.0/8"), many); ok {
		t.Error("a carve into more than maxPieces pieces was not refused")
	}
}
