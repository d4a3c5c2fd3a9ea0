package firewall_test

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/parryhq/parry/firewall"
	"github.com/parryhq/parry/test/netns"
	"golang.org/x/sys/unix"
)

// render is an element as a sorted line: "reject 192.0.2.0/24 tcp/22".
func render(e firewall.Element) string {
	scope := "all"
	switch {
	case e.Port != 0:
		scope = fmt.Sprintf("%d/%d", e.Proto, e.Port)
	case e.Proto != 0:
		scope = fmt.Sprintf("%d", e.Proto)
	}
	return fmt.Sprintf("%s %s %s", e.Action, e.Prefix, scope)
}

func renderAll(els []firewall.Element) []string {
	out := make([]string, 0, len(els))
	for _, e := range els {
		out = append(out, render(e))
	}
	sort.Strings(out)
	return out
}

func TestScopedElementsAndOracle(t *testing.T) {
	ns := netns.New(t)
	f := newFirewall(t, ns)
	tcp, udp, icmp := uint8(unix.IPPROTO_TCP), uint8(unix.IPPROTO_UDP), uint8(unix.IPPROTO_ICMP)
	in := []firewall.Element{
		{Prefix: pfx("203.0.113.7/32"), Proto: tcp, Port: 22, Timeout: time.Hour},
		{Prefix: pfx("203.0.113.7/32"), Proto: tcp, Port: 2222, Timeout: time.Hour},
		{Prefix: pfx("198.51.100.0/24"), Proto: udp, Port: 53, Timeout: time.Hour},
		{Prefix: pfx("198.51.100.0/24"), Proto: icmp, Timeout: time.Hour},
		{Prefix: pfx("2001:db8::/64"), Proto: tcp, Port: 443, Action: firewall.Reject, Timeout: time.Hour},
		{Prefix: pfx("2001:db8::7/128"), Proto: unix.IPPROTO_ICMPV6, Action: firewall.Reject},
		{Prefix: pfx("192.0.2.9/32"), Action: firewall.Reject, Timeout: time.Hour},
		{Prefix: pfx("10.0.0.0/8"), Action: firewall.Reject, Timeout: time.Hour},
		{Prefix: pfx("10.0.0.0/8"), Timeout: time.Hour}, // a plain drop of the same prefix is another element
		{Prefix: pfx("240.0.0.0/4"), Proto: tcp, Port: 80, Timeout: time.Hour},
	}
	if err := f.Block(in); err != nil {
		t.Fatalf("Block: %v", err)
	}
	all, err := f.AllElements()
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"drop 10.0.0.0/8 all",
		"drop 198.51.100.0/24 1",
		"drop 198.51.100.0/24 17/53",
		"drop 203.0.113.7/32 6/22",
		"drop 203.0.113.7/32 6/2222",
		"drop 240.0.0.0/4 6/80",
		"reject 10.0.0.0/8 all",
		"reject 192.0.2.9/32 all",
		"reject 2001:db8::/64 6/443",
		"reject 2001:db8::7/128 58",
	}
	if d := cmp.Diff(want, renderAll(all)); d != "" {
		t.Errorf("AllElements (-want +got):\n%s", d)
	}
	for _, e := range all {
		if e.Prefix == pfx("2001:db8::7/128") {
			if e.Timeout != 0 {
				t.Errorf("%s: timeout %v, want permanent", render(e), e.Timeout)
			}
		} else if e.Timeout <= 59*time.Minute || e.Timeout > time.Hour {
			t.Errorf("%s: remaining %v, want about 1h", render(e), e.Timeout)
		}
	}
	// Elements (what the daemon reads today) keeps returning the plain drops only.
	if plain, err := f.Elements(); err != nil || len(plain) != 1 || plain[0].Prefix != pfx("10.0.0.0/8") {
		t.Errorf("Elements = %v, %v; want only the plain drop 10.0.0.0/8", plain, err)
	}
	got := listTable(t, ns, f.Table())
	oracle := map[string]map[string]float64{
		"block4port":   {"203.0.113.7/32 . tcp . 22": 3600, "203.0.113.7/32 . tcp . 2222": 3600, "198.51.100.0/24 . udp . 53": 3600, "240.0.0.0/4 . tcp . 80": 3600},
		"block4proto":  {"198.51.100.0/24 . icmp": 3600},
		"reject6port":  {"2001:db8::/64 . tcp . 443": 3600},
		"reject6proto": {"2001:db8::7/128 . ipv6-icmp": 0},
		"reject4":      {"192.0.2.9/32": 3600},
		"reject4net":   {"10.0.0.0/8": 3600},
		"block4net":    {"10.0.0.0/8": 3600},
	}
	for set, want := range oracle {
		if d := cmp.Diff(want, got.Sets[set].Elems); d != "" {
			t.Errorf("nft view of %s (-want +got):\n%s", set, d)
		}
	}
}

func TestScopedTimeoutReplaceAndExpiry(t *testing.T) {
	for _, deleteAdd := range []bool{false, true} {
		t.Run(fmt.Sprintf("deleteAdd=%v", deleteAdd), func(t *testing.T) {
			f := newFirewall(t, netns.New(t))
			if deleteAdd {
				firewall.UseDeleteAdd(f)
			}
			els := []firewall.Element{
				{Prefix: pfx("203.0.113.7/32"), Proto: unix.IPPROTO_TCP, Port: 22},
				{Prefix: pfx("198.51.100.0/24"), Proto: unix.IPPROTO_UDP},
				{Prefix: pfx("2001:db8:1::/48"), Proto: unix.IPPROTO_TCP, Port: 22, Action: firewall.Reject},
				{Prefix: pfx("2001:db8::7/128"), Action: firewall.Reject},
			}
			for _, step := range []struct{ set, min, max time.Duration }{
				{time.Hour, 59 * time.Minute, time.Hour},
				{10 * time.Second, 5 * time.Second, 10 * time.Second}, // shorter
				{0, 0, 0}, // permanent
				{2 * time.Hour, 119 * time.Minute, 2 * time.Hour},
			} {
				for i := range els {
					els[i].Timeout = step.set
				}
				if err := f.Block(els); err != nil {
					t.Fatalf("Block for %v: %v", step.set, err)
				}
				all, err := f.AllElements()
				if err != nil {
					t.Fatal(err)
				}
				if len(all) != len(els) {
					t.Fatalf("after Block for %v: %v, want %d elements", step.set, renderAll(all), len(els))
				}
				for _, e := range all {
					if step.max == 0 && e.Timeout != 0 || step.max != 0 && (e.Timeout < step.min || e.Timeout > step.max) {
						t.Errorf("%s after Block for %v: remaining %v", render(e), step.set, e.Timeout)
					}
				}
			}
			// Expiry per element: two of them for 1 s, the others stay.
			if err := f.Block([]firewall.Element{
				{Prefix: pfx("203.0.113.7/32"), Proto: unix.IPPROTO_TCP, Port: 22, Timeout: time.Second},
				{Prefix: pfx("2001:db8:1::/48"), Proto: unix.IPPROTO_TCP, Port: 22, Action: firewall.Reject, Timeout: time.Second},
			}); err != nil {
				t.Fatal(err)
			}
			netns.Eventually(t, 15*time.Second, "the 1 s scoped elements expire", func() bool {
				all, err := f.AllElements()
				return err == nil && cmp.Equal(renderAll(all), []string{"drop 198.51.100.0/24 17", "reject 2001:db8::7/128 all"})
			})
		})
	}
}

func TestUnblockElements(t *testing.T) {
	ns := netns.New(t)
	f := newFirewall(t, ns)
	tcp := uint8(unix.IPPROTO_TCP)
	if err := f.Block([]firewall.Element{
		{Prefix: pfx("203.0.113.7/32"), Proto: tcp, Port: 22, Timeout: time.Hour},
		{Prefix: pfx("203.0.113.7/32"), Proto: tcp, Port: 23, Timeout: time.Hour},
		{Prefix: pfx("10.0.0.0/8"), Proto: tcp, Port: 22, Timeout: time.Hour},
		{Prefix: pfx("10.0.0.0/8"), Action: firewall.Reject, Timeout: time.Hour},
		{Prefix: pfx("10.0.0.0/8"), Timeout: time.Hour},
	}); err != nil {
		t.Fatal(err)
	}
	// Present and absent ones mixed, including absent ones inside present
	// prefixes (the kernel refuses their add: the fallback reads the sets).
	if err := f.UnblockElements([]firewall.Element{
		{Prefix: pfx("203.0.113.7/32"), Proto: tcp, Port: 22},
		{Prefix: pfx("203.0.113.7/32"), Proto: tcp, Port: 80},                      // absent port
		{Prefix: pfx("10.1.0.0/16"), Proto: tcp, Port: 22},                         // absent, inside a present one
		{Prefix: pfx("10.1.0.0/16"), Action: firewall.Reject},                      // likewise
		{Prefix: pfx("10.0.0.0/8"), Action: firewall.Reject, Timeout: time.Minute}, // the timeout is ignored
	}); err != nil {
		t.Fatalf("UnblockElements: %v", err)
	}
	all, err := f.AllElements()
	if err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff([]string{"drop 10.0.0.0/8 6/22", "drop 10.0.0.0/8 all", "drop 203.0.113.7/32 6/23"}, renderAll(all)); d != "" {
		t.Errorf("after UnblockElements (-want +got):\n%s", d)
	}
	// Unblock of a prefix removes its plain drop only.
	if err := f.Unblock([]netip.Prefix{pfx("10.0.0.0/8")}); err != nil {
		t.Fatal(err)
	}
	if all, _ = f.AllElements(); !cmp.Equal(renderAll(all), []string{"drop 10.0.0.0/8 6/22", "drop 203.0.113.7/32 6/23"}) {
		t.Errorf("after Unblock: %v", renderAll(all))
	}
}

func TestInvalidScopeChangesNothing(t *testing.T) {
	f := newFirewall(t, netns.New(t))
	for _, bad := range []firewall.Element{
		{Prefix: pfx("203.0.113.1/32"), Port: 22},                           // port without a protocol
		{Prefix: pfx("203.0.113.1/32"), Proto: unix.IPPROTO_ICMP, Port: 22}, // ICMP has no ports
		{Prefix: pfx("203.0.113.1/32"), Action: firewall.Action(7)},         // unknown action
	} {
		err := f.Block([]firewall.Element{{Prefix: pfx("203.0.113.2/32"), Timeout: time.Hour}, bad})
		if !errors.Is(err, firewall.ErrInvalidScope) {
			t.Errorf("Block %+v: err = %v, want ErrInvalidScope", bad, err)
		}
		if err := f.UnblockElements([]firewall.Element{bad}); !errors.Is(err, firewall.ErrInvalidScope) {
			t.Errorf("UnblockElements %+v: err = %v, want ErrInvalidScope", bad, err)
		}
	}
	if all, _ := f.AllElements(); len(all) != 0 {
		t.Errorf("invalid input changed the kernel: %v", renderAll(all))
	}
}

// TestEnsureUpgradesV1Layout: a table built by the previous parry (layout
// v1, testdata/layout-v1.nft as `nft list table` printed it) with blocks in
// it. Ensure adds the new sets and chains and refills the old chains in one
// transaction, and the blocks stay in the kernel throughout.
func TestEnsureUpgradesV1Layout(t *testing.T) {
	ns := netns.New(t)
	f := newUnensured(t, ns)
	v1, err := os.ReadFile("testdata/layout-v1.nft")
	if err != nil {
		t.Fatal(err)
	}
	script := filepath.Join(t.TempDir(), "v1.nft")
	if err := os.WriteFile(script, []byte(strings.ReplaceAll(string(v1), "TABLE", f.Table())), 0o600); err != nil {
		t.Fatal(err)
	}
	ns.MustRun(t, "nft", "-f", script)
	ns.MustRun(t, "nft", "add", "element", "inet", f.Table(), "block4", "{ 203.0.113.7 timeout 1h }")
	ns.MustRun(t, "nft", "add", "element", "inet", f.Table(), "block6net", "{ 2001:db8::/64 timeout 1h }")
	ns.MustRun(t, "nft", "add", "element", "inet", f.Table(), "allow4", "{ 192.0.2.10 }")
	if ok, err := f.Present(); err != nil || ok {
		t.Fatalf("Present on a v1 table = %v, %v; want false", ok, err)
	}
	if err := f.Ensure(); err != nil {
		t.Fatalf("Ensure: %v", err)
	}
	if ok, err := f.Present(); err != nil || !ok {
		t.Fatalf("Present after the upgrade = %v, %v; want true", ok, err)
	}
	got := listTable(t, ns, f.Table())
	if len(got.Sets) != 24 || got.Rules["input"] != 16 || got.Rules["prerouting"] != 12 || got.Rules["rejecting"] != 2 {
		t.Errorf("upgraded table: %d sets, rules %v", len(got.Sets), got.Rules)
	}
	els, err := f.Elements()
	if err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff([]string{"2001:db8::/64", "203.0.113.7/32"}, prefixes(els)); d != "" {
		t.Errorf("blocks after the upgrade (-want +got):\n%s", d)
	}
	if d := cmp.Diff(map[string]float64{"192.0.2.10/32": 0}, got.Sets["allow4"].Elems); d != "" {
		t.Errorf("allowlist after the upgrade (-want +got):\n%s", d)
	}
	// And the new kinds work in the upgraded table.
	if err := f.Block([]firewall.Element{{Prefix: pfx("203.0.113.8/32"), Proto: unix.IPPROTO_TCP, Port: 22, Action: firewall.Reject, Timeout: time.Hour}}); err != nil {
		t.Fatalf("Block a scoped reject after the upgrade: %v", err)
	}
	// The upgraded table is the table a fresh Ensure builds.
	g := newFirewall(t, ns)
	fresh := listTable(t, ns, g.Table())
	if d := cmp.Diff(len(fresh.Sets), len(got.Sets)); d != "" {
		t.Errorf("sets: %s", d)
	}
	if d := cmp.Diff(fresh.Rules, got.Rules); d != "" {
		t.Errorf("rules per chain, fresh vs upgraded (-fresh +upgraded):\n%s", d)
	}
	a := ns.MustRun(t, "nft", "list", "chain", "inet", f.Table(), "input")
	b := ns.MustRun(t, "nft", "list", "chain", "inet", g.Table(), "input")
	if d := cmp.Diff(strings.ReplaceAll(b, g.Table(), "T"), strings.ReplaceAll(a, f.Table(), "T")); d != "" {
		t.Errorf("input chain, fresh vs upgraded (-fresh +upgraded):\n%s", d)
	}
}

// TestEnsureRebuildsOnSetOfAnotherType: a set of ours with another key
// type cannot be mended in place; Ensure replaces our table (only ours).
func TestEnsureRebuildsOnSetOfAnotherType(t *testing.T) {
	ns := netns.New(t)
	f := newFirewall(t, ns)
	ns.MustRun(t, "nft", "delete", "table", "inet", f.Table())
	ns.MustRun(t, "nft", "add", "table", "inet", f.Table())
	ns.MustRun(t, "nft", "add", "set", "inet", f.Table(), "block4port", "{ type ipv4_addr . inet_service; flags interval; }")
	if ok, err := f.Present(); err != nil || ok {
		t.Fatalf("Present = %v, %v; want false", ok, err)
	}
	if err := f.Ensure(); err != nil {
		t.Fatalf("Ensure: %v", err)
	}
	if ok, err := f.Present(); err != nil || !ok {
		t.Fatalf("Present after Ensure = %v, %v; want true", ok, err)
	}
	if got := listTable(t, ns, f.Table()).Sets["block4port"].Type; got != "ipv4_addr . inet_proto . inet_service" {
		t.Errorf("block4port type after Ensure = %q", got)
	}
}
