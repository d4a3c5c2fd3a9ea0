package firewall_test

import (
	"net/netip"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/parryhq/parry/firewall"
	"github.com/parryhq/parry/firewall/union"
	"github.com/parryhq/parry/test/netns"
	"golang.org/x/sys/unix"
)

// applyDiff sends a union diff to the kernel the way the daemon is meant
// to: deletes and adds (re-times are re-adds) in one Apply, timeouts from
// the pieces' absolute expiries.
func applyDiff(t *testing.T, f *firewall.NFT, d union.Diff[firewall.Scope], now time.Time) {
	t.Helper()
	var del, add []firewall.Element
	for _, p := range d.Del {
		del = append(del, p.Scope.Element(p.Prefix, 0))
	}
	for _, p := range append(d.Add, d.Retime...) {
		var timeout time.Duration
		if p.Expiry != 0 {
			if timeout = time.UnixMilli(p.Expiry).Sub(now); timeout <= 0 {
				continue // already expired: the kernel dropped it
			}
		}
		add = append(add, p.Scope.Element(p.Prefix, timeout))
	}
	if err := f.Apply(del, add); err != nil {
		t.Fatalf("Apply: %v", err)
	}
}

// TestUnionInKernel: the example through the union and Apply
// (block a /24, a /25 for longer, unblock the /24: the /25 stays, and no
// step is refused as an overlap), then a carve-out, then overlapping
// blocks that end piece by piece on time with real packets.
func TestUnionInKernel(t *testing.T) {
	p := servePair(t)
	f := newFirewall(t, p.Host)
	u := union.New[string, firewall.Scope]()
	u.Pieces()
	now := time.Now()
	ms := func(d time.Duration) int64 { return now.Add(d).UnixMilli() }
	kernel := func() []string {
		all, err := f.AllElements()
		if err != nil {
			t.Fatal(err)
		}
		return renderAll(all)
	}
	step := func(what string, change func(), want []string) {
		t.Helper()
		change()
		applyDiff(t, f, u.Changes(), now)
		if d := cmp.Diff(want, kernel()); d != "" {
			t.Errorf("%s (-want +kernel):\n%s", what, d)
		}
	}
	b24 := union.Block[firewall.Scope]{Prefix: pfx("198.51.100.0/24"), Expiry: ms(time.Hour)}
	b25 := union.Block[firewall.Scope]{Prefix: pfx("198.51.100.0/25"), Expiry: ms(24 * time.Hour)}
	ssh := union.Block[firewall.Scope]{Prefix: pfx("198.51.100.0/24"), Scope: firewall.Scope{Proto: unix.IPPROTO_TCP, Port: 22, Action: firewall.Reject}, Expiry: ms(time.Hour)}
	step("block /24", func() { must(t, u.Add("a", b24)) }, []string{"drop 198.51.100.0/24 all"})
	step("block /25 for longer", func() { must(t, u.Add("b", b25)) }, []string{"drop 198.51.100.0/25 all", "drop 198.51.100.128/25 all"})
	step("a scoped block over both", func() { must(t, u.Add("c", ssh)) }, []string{"drop 198.51.100.0/25 all", "drop 198.51.100.128/25 all", "reject 198.51.100.0/24 6/22"})
	step("unblock /24", func() { u.Remove("a", b24) }, []string{"drop 198.51.100.0/25 all", "reject 198.51.100.0/24 6/22"})
	step("carve 198.51.100.64/26", func() { must(t, u.Carve(pfx("198.51.100.64/26"))) },
		[]string{"drop 198.51.100.0/26 all", "reject 198.51.100.0/26 6/22", "reject 198.51.100.128/25 6/22"})
	for _, e := range mustAll(t, f) {
		if e.Prefix == pfx("198.51.100.0/26") && e.Action == firewall.Drop && (e.Timeout < 23*time.Hour || e.Timeout > 24*time.Hour) {
			t.Errorf("the /25's piece has %v left, want about 1d (the /25's expiry, not the /24's)", e.Timeout)
		}
	}

	// Piece by piece on time: the peer's /25 for 8 s inside a /24 for 4 s.
	// After 4 s the other half's piece is gone and the peer is still
	// blocked; after 8 s it gets through.
	now = time.Now()
	peer24 := union.Block[firewall.Scope]{Prefix: pfx("192.0.2.0/24"), Expiry: ms(4 * time.Second)}
	peer25 := union.Block[firewall.Scope]{Prefix: pfx("192.0.2.0/25"), Expiry: ms(8 * time.Second)}
	must(t, u.Add("d", peer24))
	must(t, u.Add("e", peer25))
	applyDiff(t, f, u.Changes(), now)
	wantTCP(t, "while both cover the peer", p.Peer, p.HostV4, port, "drop")
	netns.Eventually(t, 15*time.Second, "the /24's half expires in the kernel", func() bool {
		for _, e := range mustAll(t, f) {
			if e.Prefix == pfx("192.0.2.128/25") {
				return false
			}
		}
		return true
	})
	if time.Since(now) < 8*time.Second {
		wantTCP(t, "after the /24 ended, inside the /25", p.Peer, p.HostV4, port, "drop")
	}
	netns.Eventually(t, 20*time.Second, "the peer gets through once the /25 ends", func() bool {
		return dialTCP(t, p.Peer, netip.AddrPortFrom(p.HostV4, port), time.Second) == nil
	})
	if time.Since(now) < 8*time.Second {
		t.Errorf("the peer got through after %v, before its /25 ended", time.Since(now))
	}
}

func mustAll(t *testing.T, f *firewall.NFT) []firewall.Element {
	t.Helper()
	all, err := f.AllElements()
	if err != nil {
		t.Fatal(err)
	}
	return all
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
