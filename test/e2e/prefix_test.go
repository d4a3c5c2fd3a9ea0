package e2e

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"github.com/parryhq/parry/test/netns"
)

// pingFrom reports whether an ICMP echo from ns, sent from src, to dst
// gets an answer within 2 s.
func pingFrom(ns *netns.NS, src, dst netip.Addr) bool {
	_, err := ns.Run("ping", "-n", "-q", "-c", "1", "-i", "0.5", "-w", "2", "-I", src.String(), dst.String())
	return err == nil
}

// An IPv6 peer that hops addresses inside its /64 stays blocked: the
// built-in auth-failure rule counts IPv6 per /64, so five failures from
// five addresses block the /64, and an address of it never seen before is
// dropped too (real packets), while the peer's address in another /64
// still gets through.
func TestIPv6PeerHoppingInsideItsPrefixStaysBlocked(t *testing.T) {
	p := netns.NewPair(t)
	p.Peer.MustRun(t, "ip", "-6", "addr", "add", "2001:db8:1::2/64", "dev", p.PeerIf, "nodad")
	p.Peer.MustRun(t, "ip", "-6", "addr", "add", "2001:db8:1::77/64", "dev", p.PeerIf, "nodad")
	p.Host.MustRun(t, "ip", "-6", "route", "add", "2001:db8:1::/64", "dev", p.HostIf)
	first, fresh := netip.MustParseAddr("2001:db8:1::2"), netip.MustParseAddr("2001:db8:1::77")
	d := newDaemon(t, p.Host)
	d.Start()
	if !pingFrom(p.Peer, fresh, p.HostV6) || !pingFrom(p.Peer, first, p.HostV6) {
		t.Fatal("the peer's 2001:db8:1::/64 cannot reach the host before any block")
	}
	for i := range 5 {
		out := d.MustParry("signal", "auth_failure", "--ip", fmt.Sprintf("2001:db8:1::%x", 0x1000+i), "--source", "e2e")
		if i == 0 && !strings.Contains(out, "2001:db8:1::/64") {
			t.Errorf("signal output %q: want the /64 as the key", out)
		}
	}
	if out := d.MustParry("list"); !strings.Contains(out, "2001:db8:1::/64") {
		t.Fatalf("list after 5 failures from 5 addresses of one /64:\n%s", out)
	}
	if pingFrom(p.Peer, fresh, p.HostV6) || pingFrom(p.Peer, first, p.HostV6) {
		t.Fatal("an address of the blocked /64 still reaches the host")
	}
	if !pingFrom(p.Peer, p.PeerV6, p.HostV6) {
		t.Fatal("the peer's address in another /64 is dropped")
	}
}
