package firewall_test

import (
	"errors"
	"fmt"
	"math"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/parryhq/parry/firewall"
	"github.com/parryhq/parry/test/netns"
)

func pfx(s string) netip.Prefix { return netip.MustParsePrefix(s) }

func TestEnsureCreatesLayout(t *testing.T) {
	ns := netns.New(t)
	f := newFirewall(t, ns)
	got := listTable(t, ns, f.Table())
	if !got.Exists {
		t.Fatal("table not created")
	}
	wantSets := map[string][2]string{ // name → type, flags
		"allow4": {"ipv4_addr", "interval"}, "allow6": {"ipv6_addr", "interval"},
		"block4": {"ipv4_addr", "timeout"}, "block6": {"ipv6_addr", "timeout"},
		"block4net": {"ipv4_addr", "interval,timeout"}, "block6net": {"ipv6_addr", "interval,timeout"},
		"block4proto": {"ipv4_addr . inet_proto", "interval,timeout"}, "block6proto": {"ipv6_addr . inet_proto", "interval,timeout"},
		"block4port": {"ipv4_addr . inet_proto . inet_service", "interval,timeout"}, "block6port": {"ipv6_addr . inet_proto . inet_service", "interval,timeout"},
		"reject4": {"ipv4_addr", "timeout"}, "reject6": {"ipv6_addr", "timeout"},
		"reject4net": {"ipv4_addr", "interval,timeout"}, "reject6net": {"ipv6_addr", "interval,timeout"},
		"reject4proto": {"ipv4_addr . inet_proto", "interval,timeout"}, "reject6proto": {"ipv6_addr . inet_proto", "interval,timeout"},
		"reject4port": {"ipv4_addr . inet_proto . inet_service", "interval,timeout"}, "reject6port": {"ipv6_addr . inet_proto . inet_service", "interval,timeout"},
		"lockdown4": {"ipv4_addr", "interval,timeout"}, "lockdown6": {"ipv6_addr", "interval,timeout"},
		"lockallow4": {"ipv4_addr", "interval,timeout"}, "lockallow6": {"ipv6_addr", "interval,timeout"},
		"isolate4": {"ipv4_addr", "interval,timeout"}, "isolate6": {"ipv6_addr", "interval,timeout"},
	}
	gotSets := map[string][2]string{}
	for name, s := range got.Sets {
		gotSets[name] = [2]string{s.Type, fmt.Sprint(joinFlags(s.Flags))}
	}
	if d := cmp.Diff(wantSets, gotSets); d != "" {
		t.Errorf("sets (-want +got):\n%s", d)
	}
	wantChains := map[string]nftChain{
		"prerouting": {Type: "filter", Hook: "prerouting", Policy: "accept", Prio: -300},
		"rejecting":  {},
		"input":      {Type: "filter", Hook: "input", Policy: "accept", Prio: -10},
		"forward":    {Type: "filter", Hook: "forward", Policy: "accept", Prio: -10},
		"output":     {Type: "filter", Hook: "output", Policy: "accept", Prio: -10},
	}
	if d := cmp.Diff(wantChains, got.Chains); d != "" {
		t.Errorf("chains (-want +got):\n%s", d)
	}
	if d := cmp.Diff(map[string]int{"prerouting": 12, "input": 16, "forward": 16, "output": 8, "rejecting": 2}, got.Rules); d != "" {
		t.Errorf("rules per chain (-want +got):\n%s", d)
	}
	if ok, err := f.Present(); err != nil || !ok {
		t.Errorf("Present = %v, %v; want true", ok, err)
	}
	// A readable ruleset: spot-check the rules nft prints.
	out := ns.MustRun(t, "nft", "list", "chain", "inet", f.Table(), "input")
	for _, want := range []string{`iif "lo" accept`, "ip saddr @allow4 accept", "ip saddr @block4 counter", "ip6 saddr @block6net counter",
		"ip saddr @reject4net counter packets 0 bytes 0 jump rejecting",
		"ip saddr @lockallow4 accept", "icmpv6 type", "ip saddr @lockdown4 counter"} {
		if !containsLine(out, want) {
			t.Errorf("input chain lacks %q:\n%s", want, out)
		}
	}
	out = ns.MustRun(t, "nft", "list", "chain", "inet", f.Table(), "prerouting")
	for _, want := range []string{`iif "lo" accept`, "ip saddr @allow4 accept", "ip saddr . meta l4proto . th dport @block4port counter",
		"ip6 saddr . meta l4proto @block6proto counter", "ip saddr . meta l4proto . th dport @reject4port counter packets 0 bytes 0 jump rejecting"} {
		if !containsLine(out, want) {
			t.Errorf("prerouting chain lacks %q:\n%s", want, out)
		}
	}
	out = ns.MustRun(t, "nft", "list", "chain", "inet", f.Table(), "rejecting")
	for _, want := range []string{"meta l4proto tcp reject with tcp reset", "reject with icmpx admin-prohibited"} {
		if !containsLine(out, want) {
			t.Errorf("rejecting chain lacks %q:\n%s", want, out)
		}
	}
}

func joinFlags(f []string) string {
	s := ""
	for i, x := range f {
		if i > 0 {
			s += ","
		}
		s += x
	}
	return s
}

func containsLine(out, sub string) bool {
	return len(out) > 0 && (stringsContains(out, sub))
}

func TestCustomPriority(t *testing.T) {
	ns := netns.New(t)
	f, err := firewall.New(ns.Conn(t, firewall.ConnOptions()...), firewall.Config{Table: "custom", Priority: 5})
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Ensure(); err != nil {
		t.Fatal(err)
	}
	if got := listTable(t, ns, "custom").Chains["input"].Prio; got != 5 {
		t.Errorf("input priority = %d, want 5", got)
	}
}

func TestBlockElementsAndOracle(t *testing.T) {
	ns := netns.New(t)
	f := newFirewall(t, ns)
	in := []firewall.Element{
		{Prefix: pfx("203.0.113.7/32"), Timeout: time.Hour},
		{Prefix: pfx("198.51.100.0/24"), Timeout: 2 * time.Hour},
		{Prefix: pfx("2001:db8::7/128"), Timeout: time.Hour},
		{Prefix: pfx("2001:db8:1::/48"), Timeout: time.Hour},
		{Prefix: pfx("192.0.2.9/32")},                               // permanent
		{Prefix: pfx("10.1.2.3/8"), Timeout: time.Hour},             // masked to 10.0.0.0/8
		{Prefix: pfx("::ffff:203.0.113.8/128"), Timeout: time.Hour}, // IPv4-mapped → IPv4
		{Prefix: pfx("240.0.0.0/4"), Timeout: time.Hour},            // reaches the top of the space
	}
	if err := f.Block(in); err != nil {
		t.Fatalf("Block: %v", err)
	}
	els, err := f.Elements()
	if err != nil {
		t.Fatalf("Elements: %v", err)
	}
	want := []string{"10.0.0.0/8", "192.0.2.9/32", "198.51.100.0/24", "2001:db8:1::/48", "2001:db8::7/128", "203.0.113.7/32", "203.0.113.8/32", "240.0.0.0/4"}
	if d := cmp.Diff(want, prefixes(els)); d != "" {
		t.Errorf("Elements (-want +got):\n%s", d)
	}
	for _, e := range els {
		switch e.Prefix.String() {
		case "192.0.2.9/32":
			if e.Timeout != 0 {
				t.Errorf("%v: timeout %v, want permanent", e.Prefix, e.Timeout)
			}
		case "198.51.100.0/24":
			if e.Timeout <= time.Hour || e.Timeout > 2*time.Hour {
				t.Errorf("%v: remaining %v, want about 2h", e.Prefix, e.Timeout)
			}
		default:
			if e.Timeout <= 59*time.Minute || e.Timeout > time.Hour {
				t.Errorf("%v: remaining %v, want about 1h", e.Prefix, e.Timeout)
			}
		}
	}
	got := listTable(t, ns, f.Table())
	oracle := map[string]map[string]float64{
		"block4":    {"203.0.113.7/32": 3600, "192.0.2.9/32": 0, "203.0.113.8/32": 3600},
		"block6":    {"2001:db8::7/128": 3600},
		"block4net": {"198.51.100.0/24": 7200, "10.0.0.0/8": 3600, "240.0.0.0/4": 3600},
		"block6net": {"2001:db8:1::/48": 3600},
	}
	for set, want := range oracle {
		if d := cmp.Diff(want, got.Sets[set].Elems); d != "" {
			t.Errorf("nft view of %s (-want +got):\n%s", set, d)
		}
	}
}

func TestTimeoutReplace(t *testing.T) {
	t.Run("kernel", func(t *testing.T) {
		ns := netns.New(t)
		f := newFirewall(t, ns)
		t.Logf("kernel replaces timeouts on re-add: %v", firewall.UpdatesTimeouts(f))
		if got := listTable(t, ns, f.Table()).Sets["lockallow4"].Elems; len(got) != 0 {
			t.Errorf("the probe left elements behind: %v", got)
		}
		testTimeoutReplace(t, f)
	})
	t.Run("delete+add", func(t *testing.T) {
		f := newFirewall(t, netns.New(t))
		firewall.UseDeleteAdd(f)
		testTimeoutReplace(t, f)
	})
}

func testTimeoutReplace(t *testing.T, f *firewall.NFT) {
	timeoutOf := func(p string) time.Duration {
		t.Helper()
		els, err := f.Elements()
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range els {
			if e.Prefix.String() == p {
				return e.Timeout
			}
		}
		t.Fatalf("%s not in Elements: %v", p, els)
		return 0
	}
	for _, p := range []string{"203.0.113.7/32", "198.51.100.0/24", "2001:db8::7/128", "2001:db8:1::/48"} {
		steps := []struct {
			set      time.Duration
			min, max time.Duration // expected remaining; max 0 = permanent
		}{
			{time.Hour, 59 * time.Minute, time.Hour},
			{10 * time.Second, 5 * time.Second, 10 * time.Second}, // shorter
			{2 * time.Hour, 119 * time.Minute, 2 * time.Hour},     // longer
			{0, 0, 0}, // permanent
			{time.Minute, 50 * time.Second, time.Minute}, // permanent back to timed
		}
		for _, s := range steps {
			if err := f.Block([]firewall.Element{{Prefix: pfx(p), Timeout: s.set}}); err != nil {
				t.Fatalf("Block %s for %v: %v", p, s.set, err)
			}
			got := timeoutOf(p)
			if s.max == 0 && got != 0 || s.max != 0 && (got < s.min || got > s.max) {
				t.Errorf("%s after Block for %v: remaining %v, want in [%v, %v]", p, s.set, got, s.min, s.max)
			}
		}
	}
	if els, _ := f.Elements(); len(els) != 4 {
		t.Errorf("Elements after replacing = %v, want 4 entries", els)
	}
}

func TestExpiry(t *testing.T) {
	ns := netns.New(t)
	f := newFirewall(t, ns)
	if err := f.Block([]firewall.Element{
		{Prefix: pfx("203.0.113.7/32"), Timeout: time.Second},
		{Prefix: pfx("198.51.100.0/24"), Timeout: 1500 * time.Millisecond},
		{Prefix: pfx("2001:db8::7/128"), Timeout: time.Second},
		{Prefix: pfx("2001:db8:1::/48"), Timeout: time.Second},
		{Prefix: pfx("203.0.113.99/32"), Timeout: time.Hour}, // stays
	}); err != nil {
		t.Fatal(err)
	}
	if els, _ := f.Elements(); len(els) != 5 {
		t.Fatalf("Elements = %v, want 5", els)
	}
	netns.Eventually(t, 15*time.Second, "short-lived elements expire in the kernel", func() bool {
		els, err := f.Elements()
		return err == nil && slices.Equal(prefixes(els), []string{"203.0.113.99/32"})
	})
	// The oracle agrees: the interval sets are empty too (start and end
	// elements both gone).
	netns.Eventually(t, 15*time.Second, "nft shows the expired sets empty", func() bool {
		got := listTable(t, ns, f.Table())
		return len(got.Sets["block4net"].Elems) == 0 && len(got.Sets["block6net"].Elems) == 0 && len(got.Sets["block6"].Elems) == 0
	})
}

func TestOverlapIsRefused(t *testing.T) {
	ns := netns.New(t)
	f := newFirewall(t, ns)
	if err := f.Block([]firewall.Element{{Prefix: pfx("10.0.0.0/8"), Timeout: time.Hour}}); err != nil {
		t.Fatal(err)
	}
	for _, batch := range [][]firewall.Element{
		{{Prefix: pfx("10.1.0.0/16"), Timeout: time.Hour}},                                                       // inside
		{{Prefix: pfx("8.0.0.0/6"), Timeout: time.Hour}},                                                         // around
		{{Prefix: pfx("172.16.0.0/12"), Timeout: time.Hour}, {Prefix: pfx("172.16.1.0/24"), Timeout: time.Hour}}, // within one batch
		{{Prefix: pfx("2001:db8::/32"), Timeout: time.Hour}, {Prefix: pfx("2001:db8:5::/48"), Timeout: time.Hour}},
	} {
		err := f.Block(batch)
		if !errors.Is(err, firewall.ErrOverlap) {
			t.Errorf("Block %v: err = %v, want ErrOverlap", batch, err)
		}
	}
	els, err := f.Elements()
	if err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff([]string{"10.0.0.0/8"}, prefixes(els)); d != "" {
		t.Errorf("a refused batch changed something (-want +got):\n%s", d)
	}
	// A single address inside a blocked CIDR is fine: it lives in the hash set.
	if err := f.Block([]firewall.Element{{Prefix: pfx("10.1.1.1/32"), Timeout: time.Hour}}); err != nil {
		t.Errorf("Block of a single address inside a blocked CIDR: %v", err)
	}
	// Adjacent CIDRs do not overlap.
	if err := f.Block([]firewall.Element{{Prefix: pfx("11.0.0.0/8"), Timeout: time.Hour}, {Prefix: pfx("9.0.0.0/8"), Timeout: time.Hour}}); err != nil {
		t.Errorf("Block of adjacent CIDRs: %v", err)
	}
	els, err = f.Elements()
	if err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff([]string{"10.0.0.0/8", "10.1.1.1/32", "11.0.0.0/8", "9.0.0.0/8"}, prefixes(els)); d != "" {
		t.Errorf("Elements with adjacent CIDRs (-want +got):\n%s", d)
	}
}

func TestUnblock(t *testing.T) {
	ns := netns.New(t)
	f := newFirewall(t, ns)
	if err := f.Block([]firewall.Element{
		{Prefix: pfx("203.0.113.7/32"), Timeout: time.Hour},
		{Prefix: pfx("203.0.113.8/32"), Timeout: time.Hour},
		{Prefix: pfx("10.0.0.0/8"), Timeout: time.Hour},
		{Prefix: pfx("2001:db8::7/128")},
		{Prefix: pfx("2001:db8:1::/48"), Timeout: time.Hour},
	}); err != nil {
		t.Fatal(err)
	}
	// Present and absent ones mixed; absent ones are not an error, including
	// a CIDR inside a blocked one (not itself present).
	if err := f.Unblock([]netip.Prefix{pfx("203.0.113.7/32"), pfx("203.0.113.77/32"), pfx("2001:db8::7/128"), pfx("2001:db8:1::/48"), pfx("192.168.0.0/16")}); err != nil {
		t.Fatalf("Unblock: %v", err)
	}
	if err := f.Unblock([]netip.Prefix{pfx("10.1.0.0/16"), pfx("203.0.113.8/32")}); err != nil {
		t.Fatalf("Unblock of a CIDR inside a blocked one: %v", err)
	}
	els, err := f.Elements()
	if err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff([]string{"10.0.0.0/8"}, prefixes(els)); d != "" {
		t.Errorf("after Unblock (-want +got):\n%s", d)
	}
	if got := listTable(t, ns, f.Table()).Sets["block4net"].Elems; len(got) != 1 {
		t.Errorf("nft block4net = %v, want only 10.0.0.0/8", got)
	}
}

func TestLongTimeouts(t *testing.T) {
	ns := netns.New(t)
	f := newFirewall(t, ns)
	for _, d := range []time.Duration{10 * 365 * 24 * time.Hour, time.Duration(math.MaxInt64)} {
		if err := f.Block([]firewall.Element{{Prefix: pfx("203.0.113.7/32"), Timeout: d}, {Prefix: pfx("198.51.100.0/24"), Timeout: d}}); err != nil {
			t.Errorf("Block for %v: %v", d, err)
		}
	}
	if err := f.Block([]firewall.Element{{Prefix: pfx("203.0.113.8/32"), Timeout: time.Nanosecond}}); err != nil {
		t.Fatal(err)
	}
	netns.Eventually(t, 5*time.Second, "a 1ns block (sent as 1ms) expires rather than being permanent", func() bool {
		els, err := f.Elements()
		return err == nil && len(els) == 2
	})
}

func TestInvalidInputChangesNothing(t *testing.T) {
	ns := netns.New(t)
	f := newFirewall(t, ns)
	for _, bad := range [][]firewall.Element{
		{{Prefix: pfx("203.0.113.1/32"), Timeout: time.Hour}, {Prefix: netip.Prefix{}, Timeout: time.Hour}},
		{{Prefix: pfx("203.0.113.1/32"), Timeout: time.Hour}, {Prefix: pfx("203.0.113.2/32"), Timeout: -time.Second}},
		{{Prefix: netip.PrefixFrom(netip.MustParseAddr("2001:db8::1"), 129)}},
	} {
		if err := f.Block(bad); err == nil {
			t.Errorf("Block %v: no error", bad)
		}
	}
	if err := f.Lockdown(firewall.Lockdown{}); !errors.Is(err, firewall.ErrInvalidTimeout) {
		t.Errorf("Lockdown without timeout: err = %v, want ErrInvalidTimeout", err)
	}
	if els, _ := f.Elements(); len(els) != 0 {
		t.Errorf("invalid input changed the kernel: %v", els)
	}
}

func TestEnsureIsIdempotentAndKeepsElements(t *testing.T) {
	ns := netns.New(t)
	f := newFirewall(t, ns)
	if err := f.Block([]firewall.Element{{Prefix: pfx("203.0.113.7/32"), Timeout: time.Hour}, {Prefix: pfx("198.51.100.0/24")}}); err != nil {
		t.Fatal(err)
	}
	before := ns.MustRun(t, "nft", "-a", "list", "table", "inet", f.Table()) // with handles
	for range 3 {
		if err := f.Ensure(); err != nil {
			t.Fatal(err)
		}
	}
	// A fresh process (new NFT on a new connection) adopts the table too.
	f2, err := firewall.New(ns.Conn(t, firewall.ConnOptions()...), firewall.Config{Table: f.Table()})
	if err != nil {
		t.Fatal(err)
	}
	if err := f2.Ensure(); err != nil {
		t.Fatal(err)
	}
	after := ns.MustRun(t, "nft", "-a", "list", "table", "inet", f.Table())
	if d := cmp.Diff(stripExpires(before), stripExpires(after)); d != "" {
		t.Errorf("Ensure on an intact table changed it (-before +after):\n%s", d)
	}
}

func TestEnsureRebuildsADamagedTable(t *testing.T) {
	for _, damage := range [][]string{
		{"delete", "chain", "inet", "TABLE", "output"},
		{"flush", "chain", "inet", "TABLE", "input"},
		{"add", "rule", "inet", "TABLE", "input", "accept"},
		{"delete", "table", "inet", "TABLE"}, // and then an empty one of that name
	} {
		t.Run(damage[0]+"_"+damage[1], func(t *testing.T) {
			ns := netns.New(t)
			f := newFirewall(t, ns)
			// Another table must survive our rebuild untouched.
			ns.MustRun(t, "nft", "add", "table", "inet", "other")
			ns.MustRun(t, "nft", "add", "set", "inet", "other", "keep", "{ type ipv4_addr; }")
			ns.MustRun(t, "nft", "add", "element", "inet", "other", "keep", "{ 192.0.2.55 }")
			args := slices.Clone(damage)
			args[3] = f.Table()
			if damage[1] == "rule" {
				args = append(args[:4], "input", "accept")
			}
			ns.MustRun(t, "nft", args...)
			if damage[1] == "table" {
				ns.MustRun(t, "nft", "add", "table", "inet", f.Table())
			}
			if ok, err := f.Present(); err != nil || ok {
				t.Fatalf("Present after %v = %v, %v; want false", damage, ok, err)
			}
			if err := f.Ensure(); err != nil {
				t.Fatalf("Ensure: %v", err)
			}
			if ok, err := f.Present(); err != nil || !ok {
				t.Fatalf("Present after Ensure = %v, %v; want true", ok, err)
			}
			got := listTable(t, ns, f.Table())
			if len(got.Sets) != 24 || got.Rules["input"] != 16 || got.Rules["output"] != 8 || got.Rules["prerouting"] != 12 {
				t.Errorf("rebuilt table: %d sets, rules %v", len(got.Sets), got.Rules)
			}
			if other := listTable(t, ns, "other"); other.Sets["keep"].Elems["192.0.2.55/32"] != 0 || len(other.Sets["keep"].Elems) != 1 {
				t.Errorf("other table changed: %+v", other)
			}
		})
	}
}

func TestRemove(t *testing.T) {
	ns := netns.New(t)
	f := newFirewall(t, ns)
	ns.MustRun(t, "nft", "add", "table", "inet", "other")
	if err := f.Block([]firewall.Element{{Prefix: pfx("203.0.113.7/32"), Timeout: time.Hour}}); err != nil {
		t.Fatal(err)
	}
	if err := f.Remove(); err != nil {
		t.Fatalf("Remove: %v", err)
	}
	if listTable(t, ns, f.Table()).Exists {
		t.Error("table still there after Remove")
	}
	if !listTable(t, ns, "other").Exists {
		t.Error("Remove deleted another table")
	}
	if err := f.Remove(); err != nil {
		t.Errorf("Remove of a missing table: %v", err)
	}
	if ok, err := f.Present(); err != nil || ok {
		t.Errorf("Present after Remove = %v, %v", ok, err)
	}
	if _, err := f.Elements(); !errors.Is(err, firewall.ErrNotEnsured) {
		t.Errorf("Elements without a table: err = %v, want ErrNotEnsured", err)
	}
	if err := f.Block([]firewall.Element{{Prefix: pfx("203.0.113.7/32")}}); !errors.Is(err, firewall.ErrNotEnsured) {
		t.Errorf("Block without a table: err = %v, want ErrNotEnsured", err)
	}
}

func TestSetAllow(t *testing.T) {
	ns := netns.New(t)
	f := newFirewall(t, ns)
	if err := f.SetAllow([]netip.Prefix{pfx("192.0.2.0/24"), pfx("192.0.2.5/32"), pfx("2001:db8::/64"), pfx("198.51.100.1/32")}); err != nil {
		t.Fatal(err)
	}
	got := listTable(t, ns, f.Table())
	if d := cmp.Diff(map[string]float64{"192.0.2.0/24": 0, "198.51.100.1/32": 0}, got.Sets["allow4"].Elems); d != "" {
		t.Errorf("allow4 (-want +got):\n%s", d)
	}
	if d := cmp.Diff(map[string]float64{"2001:db8::/64": 0}, got.Sets["allow6"].Elems); d != "" {
		t.Errorf("allow6 (-want +got):\n%s", d)
	}
	// Replace: the old entries go.
	if err := f.SetAllow([]netip.Prefix{pfx("203.0.113.0/24")}); err != nil {
		t.Fatal(err)
	}
	got = listTable(t, ns, f.Table())
	if d := cmp.Diff(map[string]float64{"203.0.113.0/24": 0}, got.Sets["allow4"].Elems); d != "" {
		t.Errorf("allow4 after replace (-want +got):\n%s", d)
	}
	if len(got.Sets["allow6"].Elems) != 0 {
		t.Errorf("allow6 after replace = %v, want empty", got.Sets["allow6"].Elems)
	}
	if err := f.SetAllow(nil); err != nil {
		t.Fatal(err)
	}
	if got := listTable(t, ns, f.Table()); len(got.Sets["allow4"].Elems) != 0 {
		t.Errorf("allow4 after clearing = %v", got.Sets["allow4"].Elems)
	}
}

func TestBlock100k(t *testing.T) {
	if testing.Short() {
		t.Skip("short")
	}
	ns := netns.New(t)
	f := newFirewall(t, ns)
	els := make([]firewall.Element, 0, 100_000)
	for i := range 100_000 {
		els = append(els, firewall.Element{Prefix: netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}), 32), Timeout: time.Hour})
	}
	start := time.Now()
	if err := f.Block(els); err != nil {
		t.Fatalf("Block 100k: %v", err)
	}
	t.Logf("Block of 100,000 IPv4 addresses: %v", time.Since(start))
	// Exact lookups see every element at once; a full dump taken while the
	// kernel grows the hash table in the background can come back short (the
	// set walk skips entries during a resize), so the dumps are polled.
	if out, err := ns.Run("nft", "get", "element", "inet", f.Table(), "block4", "{ 10.0.0.0, 10.0.200.7, 10.1.134.159 }"); err != nil {
		t.Fatalf("lookup right after Block: %v\n%s", err, out)
	}
	var got []firewall.Element
	netns.Eventually(t, 60*time.Second, "Elements returns all 100,000", func() bool {
		start := time.Now()
		var err error
		if got, err = f.Elements(); err != nil {
			t.Fatal(err)
		}
		t.Logf("Elements of 100,000: %v (%d)", time.Since(start), len(got))
		return len(got) == 100_000
	})
	netns.Eventually(t, 60*time.Second, "nft -j list shows all 100,000", func() bool {
		start := time.Now()
		n := len(listTable(t, ns, f.Table()).Sets["block4"].Elems)
		t.Logf("nft -j list of 100,000: %v (%d)", time.Since(start), n)
		return n == 100_000
	})
	// And 20,000 IPv6 CIDRs (interval set, larger elements).
	cidrs := make([]firewall.Element, 0, 20_000)
	for i := range 20_000 {
		a := netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, byte(i >> 8), byte(i)})
		cidrs = append(cidrs, firewall.Element{Prefix: netip.PrefixFrom(a, 48), Timeout: time.Hour})
	}
	if err := f.Block(cidrs); err != nil {
		t.Fatalf("Block 20k IPv6 CIDRs: %v", err)
	}
	netns.Eventually(t, 60*time.Second, "Elements returns all 120,000", func() bool {
		var err error
		if got, err = f.Elements(); err != nil {
			t.Fatal(err)
		}
		return len(got) == 120_000
	})
}
