package firewall

import (
	"errors"
	"net/netip"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/nftables"
)

func TestPrefixesOfRange(t *testing.T) {
	for _, tc := range []struct {
		first, last string
		want        []string
	}{
		{"10.0.0.0", "10.0.0.255", []string{"10.0.0.0/24"}},
		{"10.0.0.1", "10.0.0.6", []string{"10.0.0.1/32", "10.0.0.2/31", "10.0.0.4/31", "10.0.0.6/32"}},
		{"0.0.0.0", "255.255.255.255", []string{"0.0.0.0/0"}},
		{"::", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", []string{"::/0"}},
		{"2001:db8::", "2001:db8::ffff:ffff:ffff:ffff", []string{"2001:db8::/64"}},
		{"192.0.2.7", "192.0.2.7", []string{"192.0.2.7/32"}},
	} {
		var got []string
		for _, p := range prefixesOfRange(netip.MustParseAddr(tc.first), netip.MustParseAddr(tc.last)) {
			got = append(got, p.String())
		}
		if d := cmp.Diff(tc.want, got); d != "" {
			t.Errorf("%s-%s (-want +got):\n%s", tc.first, tc.last, d)
		}
	}
}

func TestIntervalsToElements(t *testing.T) {
	key := func(s string) []byte { return netip.MustParseAddr(s).AsSlice() }
	// As an rbtree dump may list them: reverse order, adjacent intervals,
	// an open-ended last interval.
	dump := []nftables.SetElement{
		{Key: key("240.0.0.0"), Timeout: time.Hour, Expires: 30 * time.Minute},
		{Key: key("12.0.0.0"), IntervalEnd: true},
		{Key: key("11.0.0.0"), Timeout: time.Hour, Expires: time.Minute},
		{Key: key("11.0.0.0"), IntervalEnd: true},
		{Key: key("10.0.0.0")},
	}
	got := intervalsToElements(dump)
	want := []Element{
		{Prefix: netip.MustParsePrefix("10.0.0.0/8")},
		{Prefix: netip.MustParsePrefix("11.0.0.0/8"), Timeout: time.Minute},
		{Prefix: netip.MustParsePrefix("240.0.0.0/4"), Timeout: 30 * time.Minute},
	}
	if d := cmp.Diff(want, got, cmp.Comparer(func(a, b netip.Prefix) bool { return a == b })); d != "" {
		t.Errorf("(-want +got):\n%s", d)
	}
}

func TestNormPrefix(t *testing.T) {
	for in, want := range map[string]string{
		"10.1.2.3/8":             "10.0.0.0/8",
		"::ffff:203.0.113.8/128": "203.0.113.8/32",
		"::ffff:203.0.113.0/120": "203.0.113.0/24",
		"2001:db8::1/64":         "2001:db8::/64",
	} {
		got, err := normPrefix(netip.MustParsePrefix(in))
		if err != nil || got.String() != want {
			t.Errorf("normPrefix(%s) = %v, %v; want %s", in, got, err, want)
		}
	}
	for _, bad := range []netip.Prefix{{}, netip.MustParsePrefix("::ffff:0.0.0.0/95")} {
		if _, err := normPrefix(bad); !errors.Is(err, ErrInvalidPrefix) {
			t.Errorf("normPrefix(%v): err = %v, want ErrInvalidPrefix", bad, err)
		}
	}
}

func TestChangeBuilderStaysBelowTheAttributeLimit(t *testing.T) {
	s := &nftables.Set{Name: "block4net", Interval: true, HasTimeout: true}
	b := newChangeBuilder(false)
	for i := range 10_000 {
		p := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i >> 8), byte(i), 0}), 24)
		b.add(s, intervalElems(p, time.Hour)...)
	}
	total := 0
	for _, c := range b.changes() {
		if c.bytes > maxListBytes {
			t.Errorf("change of %d bytes > %d", c.bytes, maxListBytes)
		}
		if len(c.elems)%2 != 0 || c.elems[len(c.elems)-1].IntervalEnd != true {
			t.Errorf("change splits an interval: %d elements, last end=%v", len(c.elems), c.elems[len(c.elems)-1].IntervalEnd)
		}
		total += len(c.elems)
	}
	if total != 20_000 {
		t.Errorf("%d elements in changes, want 20000", total)
	}
}

func TestDisjoint(t *testing.T) {
	v4, v6, err := disjoint([]netip.Prefix{
		netip.MustParsePrefix("192.0.2.5/32"), netip.MustParsePrefix("192.0.2.0/24"),
		netip.MustParsePrefix("2001:db8::/32"), netip.MustParsePrefix("2001:db8:1::/48"),
		netip.MustParsePrefix("198.51.100.0/24"), netip.MustParsePrefix("192.0.2.0/24"),
	})
	if err != nil {
		t.Fatal(err)
	}
	str := func(ps []netip.Prefix) (out []string) {
		for _, p := range ps {
			out = append(out, p.String())
		}
		return out
	}
	if d := cmp.Diff([]string{"192.0.2.0/24", "198.51.100.0/24"}, str(v4)); d != "" {
		t.Errorf("v4 (-want +got):\n%s", d)
	}
	if d := cmp.Diff([]string{"2001:db8::/32"}, str(v6)); d != "" {
		t.Errorf("v6 (-want +got):\n%s", d)
	}
}
