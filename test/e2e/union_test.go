package e2e

import (
	"net/netip"
	"testing"
	"time"

	"github.com/parryhq/parry/test/netns"
)

// unionPair is a pair whose peer also has an address in each half of
// 198.51.100.0/24 (routed to it from the host).
func unionPair(t *testing.T) (p *netns.Pair, low, high netip.Addr) {
	p = netns.NewPair(t)
	low, high = netip.MustParseAddr("198.51.100.9"), netip.MustParseAddr("198.51.100.200")
	for _, a := range []netip.Addr{low, high} {
		p.Peer.MustRun(t, "ip", "addr", "add", a.String()+"/32", "dev", p.PeerIf)
	}
	p.Host.MustRun(t, "ip", "route", "add", "198.51.100.0/24", "via", p.PeerV4.String(), "dev", p.HostIf)
	return p, low, high
}

// Overlapping blocks are records of their own; the kernel holds their
// union. Block the /24, block the /25 inside it for a day, unblock the
// /24: the /25 stays blocked and the other half gets through (real
// packets; issue 14).
func TestUnblockLeavesWhatOthersCover(t *testing.T) {
	p, low, high := unionPair(t)
	d := newDaemon(t, p.Host)
	d.Start()
	if !pingFrom(p.Peer, low, p.HostV4) || !pingFrom(p.Peer, high, p.HostV4) {
		t.Fatal("the peer's 198.51.100.0/24 addresses cannot reach the host before any block")
	}
	d.MustParry("block", "198.51.100.0/24")
	d.MustParry("block", "198.51.100.0/25", "--for", "1d")
	if pingFrom(p.Peer, low, p.HostV4) || pingFrom(p.Peer, high, p.HostV4) {
		t.Fatal("an address of the blocked /24 reaches the host")
	}
	d.MustParry("unblock", "198.51.100.0/24")
	if pingFrom(p.Peer, low, p.HostV4) {
		t.Fatal("the /25 blocked for a day got through after unblocking the /24")
	}
	if !pingFrom(p.Peer, high, p.HostV4) {
		t.Fatal("the half of the /24 that no other block covers is still dropped")
	}
	if !pingFrom(p.Peer, p.PeerV4, p.HostV4) {
		t.Fatal("the peer's own address is dropped")
	}
}

// Overlapping blocks with different expiries end piece by piece, in the
// kernel, on time: the /24 for 8 s, the /25 inside it for 16 s. After the
// /24's end the upper half gets through while the /25 is still dropped;
// after the /25's end both do.
func TestOverlappingBlocksEndPieceByPiece(t *testing.T) {
	p, low, high := unionPair(t)
	d := newDaemon(t, p.Host)
	d.Start()
	start := time.Now()
	d.MustParry("block", "198.51.100.0/24", "--for", "8s")
	d.MustParry("block", "198.51.100.0/25", "--for", "16s")
	if pingFrom(p.Peer, low, p.HostV4) || pingFrom(p.Peer, high, p.HostV4) {
		t.Fatal("an address of the blocked /24 reaches the host")
	}
	if !netns.Poll(10*time.Second, 200*time.Millisecond, func() bool { return pingFrom(p.Peer, high, p.HostV4) }) {
		t.Fatal("the upper half is still dropped after the /24's end")
	}
	if el := time.Since(start); el < 8*time.Second {
		t.Fatalf("the upper half got through after %v, before the /24's end", el)
	}
	if time.Since(start) < 14*time.Second && pingFrom(p.Peer, low, p.HostV4) {
		t.Fatal("the /25 got through before its end")
	}
	if !netns.Poll(15*time.Second, 200*time.Millisecond, func() bool { return pingFrom(p.Peer, low, p.HostV4) }) {
		t.Fatal("the /25 is still dropped after its end")
	}
	if el := time.Since(start); el < 16*time.Second {
		t.Fatalf("the /25 got through after %v, before its end", el)
	}
}
