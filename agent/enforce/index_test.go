package enforce

import (
	"context"
	"time"

	"github.com/parryhq/parry/firewall"
	"github.com/parryhq/parry/response"
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

// Each block is its own record; the kernel gets their union. A /24 and a
// /25 inside it with a later expiry: the kernel holds the /25 until its
// end and the other half until the /24's; unblocking the /24 leaves the
// /25 (issue 14).
func TestUnionOfOverlappingBlocks(t *testing.T) {
	k := &memKernel{m: map[netip.Prefix]bool{}}
	dp := newTestPath(t, k, time.Second)
	ctx := context.Background()
	if _, err := dp.Enforce(ctx, blockOf("198.51.100.0/24")); err != nil {
		t.Fatal(err)
	}
	long := blockOf("198.51.100.0/25")
	long.Until = time.Now().Add(24 * time.Hour)
	if _, err := dp.Enforce(ctx, long); err != nil {
		t.Fatalf("block of a /25 inside a blocked /24: %v (no overlap refusal remains)", err)
	}
	if want := "198.51.100.0/25 198.51.100.128/25"; k.list() != want {
		t.Errorf("kernel after /24 and /25: %q, want %q", k.list(), want)
	}
	un := response.Decision{Action: response.ActionUnblock, Targets: pfx("198.51.100.0/24"), Admin: true}
	out, err := dp.Enforce(ctx, un)
	if err != nil || out.Removed != 1 {
		t.Fatalf("unblock /24: %+v %v", out, err)
	}
	if want := "198.51.100.0/25"; k.list() != want {
		t.Errorf("kernel after unblocking the /24: %q, want %q", k.list(), want)
	}
	src := sources(t, dp)
	if _, ok := src["198.51.100.0/25"]; len(src) != 1 || !ok {
		t.Errorf("records after unblocking the /24: %v, want the /25 only", src)
	}
	// A single address inside the /25 and a /16 around it: one piece.
	if _, err := dp.Enforce(ctx, blockOf("198.51.100.7")); err != nil {
		t.Fatal(err)
	}
	if want := "198.51.100.0/25"; k.list() != want {
		t.Errorf("kernel after an address inside the /25 (shorter): %q, want %q", k.list(), want)
	}
	// Re-assert sends the same pieces; the sweep finds nothing unknown.
	if _, _, err := dp.Reassert(); err != nil {
		t.Fatal(err)
	}
	have, _ := k.AllElements()
	if unknown, err := dp.RemoveUnknown(have); err != nil || len(unknown) != 0 {
		t.Errorf("sweep after re-assert: unknown %v, %v", unknown, err)
	}
	k.m[netip.MustParsePrefix("192.0.2.0/24")] = true
	if unknown, err := dp.RemoveUnknown(append(have, firewall.Element{Prefix: netip.MustParsePrefix("192.0.2.0/24")})); err != nil || len(unknown) != 1 {
		t.Errorf("sweep of a foreign element: unknown %v, %v", unknown, err)
	}
	if want := "198.51.100.0/25"; k.list() != want {
		t.Errorf("kernel after the sweep: %q, want %q", k.list(), want)
	}
}

// The union leaves out what parry never blocks, whatever the records say:
// an allowlist entry added under a block is carved out of its pieces in
// the kernel (the record stays), and taken out again it comes back.
func TestUnionCarvesTheGuardedRanges(t *testing.T) {
	k := &memKernel{m: map[netip.Prefix]bool{}}
	dp := newTestPath(t, k, time.Second)
	ctx := context.Background()
	if _, err := dp.Enforce(ctx, blockOf("198.51.100.0/24")); err != nil {
		t.Fatal(err)
	}
	if want := "198.51.100.0/24"; k.list() != want {
		t.Fatalf("kernel %q, want %q", k.list(), want)
	}
	if _, _, err := dp.Configure(ctx, GuardConfig{Allow: pfx("198.51.100.0/26"), MinV4: 16, MinV6: 32}); err != nil {
		t.Fatal(err)
	}
	if want := "198.51.100.64/26 198.51.100.128/25"; k.list() != want {
		t.Errorf("kernel after allowlisting a /26 inside the block: %q, want %q", k.list(), want)
	}
	if _, _, err := dp.Configure(ctx, GuardConfig{MinV4: 16, MinV6: 32}); err != nil {
		t.Fatal(err)
	}
	if want := "198.51.100.0/24"; k.list() != want {
		t.Errorf("kernel after the allowlist entry went: %q, want %q", k.list(), want)
	}
}
