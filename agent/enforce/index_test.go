package enforce

import (
	"net/netip"
	"testing"

	"github.com/parryhq/parry/agent/api"
)

func pfx(ss ...string) []netip.Prefix {
	var out []netip.Prefix
	for _, s := range ss {
		p, err := api.ParseTarget(s)
		if err != nil {
			panic(err)
		}
		out = append(out, p)
	}
	return out
}

func TestCarve(t *testing.T) {
	cases := []struct {
		p      string
		own    []string
		pieces int
	}{
		{"203.0.113.0/24", []string{"203.0.113.7"}, 8},
		{"203.0.113.0/24", []string{"203.0.113.7", "203.0.113.200"}, 14},
		{"203.0.113.0/24", []string{"192.0.2.1"}, 1},
		{"203.0.113.7/32", []string{"203.0.113.7"}, 0},
		{"2001:db8:1::/64", []string{"2001:db8:1::5"}, 64},
	}
	for _, c := range cases {
		p := netip.MustParsePrefix(c.p)
		var own []netip.Addr
		for _, s := range c.own {
			own = append(own, netip.MustParseAddr(s))
		}
		got := carve(p, own)
		if len(got) != c.pieces {
			t.Errorf("carve(%s, %v): %d pieces %v, want %d", p, own, len(got), got, c.pieces)
		}
		if p.Addr().Is6() {
			continue
		}
		// Every address of p is covered exactly once, except the own ones.
		for a := p.Addr(); p.Contains(a); a = a.Next() {
			n := 0
			for _, q := range got {
				if q.Contains(a) {
					n++
				}
			}
			want := 1
			for _, o := range own {
				if o == a {
					want = 0
				}
			}
			if n != want {
				t.Fatalf("carve(%s, %v): %s covered %d times, want %d", p, own, a, n, want)
			}
		}
	}
}

func TestOverlapIndex(t *testing.T) {
	x := newIndex()
	for _, s := range []string{"10.1.2.3", "10.9.0.0/16", "2001:db8::/48"} {
		x.put(pfx(s)[0], entry{dec: 1})
	}
	for s, want := range map[string]string{
		"10.1.2.0/24":       "", // addresses (hash set) never overlap CIDRs (interval set)
		"10.1.0.0/16":       "",
		"10.9.5.5":          "",
		"10.9.0.0/24":       "10.9.0.0/16",
		"10.0.0.0/8":        "10.9.0.0/16",
		"10.1.2.4":          "",
		"10.1.3.0/24":       "",
		"2001:db8:0:1::1":   "",
		"2001:db8:0:1::/64": "2001:db8::/48",
		"2001:db8:1::/48":   "",
		"2001:db8::/32":     "2001:db8::/48",
		"10.1.2.3":          "", // same prefix: an update, not an overlap
	} {
		q, ok := x.overlapping(pfx(s)[0], 0)
		got := ""
		if ok {
			got = q.String()
		}
		if got != want {
			t.Errorf("overlapping(%s) = %q, want %q", s, got, want)
		}
	}
}
