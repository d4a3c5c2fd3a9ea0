package firewall_test

import (
	"errors"
	"net/netip"
	"syscall"
	"testing"
	"time"

	"github.com/parryhq/parry/firewall"
	"github.com/parryhq/parry/test/netns"
	"golang.org/x/sys/unix"
)

const (
	otherPort = 8081
	udpPort   = 5300
	udpOther  = 5301
	// dropWait is how long a connection attempt waits before it counts as
	// dropped; a reset or an ICMP error comes back in well under it.
	dropWait = 1500 * time.Millisecond
)

// family is one address family of a Pair, for tests that run for both.
type family struct {
	name       string
	host, peer netip.Addr
	prohibited icmpAnswer
	echoReply  icmpAnswer
	udpErr     syscall.Errno // what a connected UDP socket reads after ICMP admin-prohibited
}

func families(p *netns.Pair) []family {
	return []family{
		{"IPv4", p.HostV4, p.PeerV4, prohibited4, echoReply4, unix.EHOSTUNREACH},
		{"IPv6", p.HostV6, p.PeerV6, prohibited6, echoReply6, unix.EACCES},
	}
}

// wantTCP checks the outcome of a TCP connect from ns to dst:port.
// want: "ok", "drop" (a timeout) or "reset" (ECONNREFUSED, fast).
func wantTCP(t *testing.T, what string, ns *netns.NS, dst netip.Addr, port int, want string) {
	t.Helper()
	start := time.Now()
	err := dialTCP(t, ns, netip.AddrPortFrom(dst, uint16(port)), dropWait)
	took := time.Since(start)
	switch want {
	case "ok":
		if err != nil {
			t.Errorf("%s: connect to %d: %v, want connected", what, port, err)
		}
	case "drop":
		if !isTimeout(err) {
			t.Errorf("%s: connect to %d: %v, want a timeout (dropped)", what, port, err)
		}
	case "reset":
		if !errors.Is(err, syscall.ECONNREFUSED) {
			t.Errorf("%s: connect to %d: %v after %v, want ECONNREFUSED (TCP reset)", what, port, err, took)
		}
	}
}

// wantUDP checks a UDP exchange: want nil (answered), "drop", or an errno.
func wantUDP(t *testing.T, what string, ns *netns.NS, dst netip.Addr, port int, want any) {
	t.Helper()
	err := udpExchange(t, ns, netip.AddrPortFrom(dst, uint16(port)), dropWait)
	switch w := want.(type) {
	case nil:
		if err != nil {
			t.Errorf("%s: udp %d: %v, want an answer", what, port, err)
		}
	case string:
		if !isTimeout(err) {
			t.Errorf("%s: udp %d: %v, want a timeout (dropped)", what, port, err)
		}
	case syscall.Errno:
		if !errors.Is(err, w) {
			t.Errorf("%s: udp %d: %v, want %v (ICMP administratively prohibited)", what, port, err, w)
		}
	}
}

func wantPing(t *testing.T, what string, ns *netns.NS, dst netip.Addr, want icmpAnswer) {
	t.Helper()
	if got := pingAnswer(t, ns, dst, dropWait); got != want {
		t.Errorf("%s: ping answered %+v, want %+v", what, got, want)
	}
}

func servePair(t *testing.T) *netns.Pair {
	p := netns.NewPair(t)
	p.Host.ServeTCP(t, port)
	p.Host.ServeTCP(t, otherPort)
	serveUDPEcho(t, p.Host, udpPort)
	serveUDPEcho(t, p.Host, udpOther)
	return p
}

// TestPacketsPortScoped: a port-scoped drop drops the blocked port only;
// every other port, protocol and ping still answers. For a single address
// and a prefix, IPv4 and IPv6.
func TestPacketsPortScoped(t *testing.T) {
	p := servePair(t)
	f := newFirewall(t, p.Host)
	for _, fam := range families(p) {
		for _, bits := range []int{fam.peer.BitLen(), fam.peer.BitLen() - 7} {
			t.Run(fam.name+"/"+netip.PrefixFrom(fam.peer, bits).Masked().String(), func(t *testing.T) {
				src := netip.PrefixFrom(fam.peer, bits).Masked()
				els := []firewall.Element{
					{Prefix: src, Proto: unix.IPPROTO_TCP, Port: port, Timeout: time.Hour},
					{Prefix: src, Proto: unix.IPPROTO_UDP, Port: udpPort, Timeout: time.Hour},
				}
				if err := f.Block(els); err != nil {
					t.Fatal(err)
				}
				wantTCP(t, "blocked port", p.Peer, fam.host, port, "drop")
				wantTCP(t, "other port", p.Peer, fam.host, otherPort, "ok")
				wantUDP(t, "blocked udp port", p.Peer, fam.host, udpPort, "drop")
				wantUDP(t, "other udp port", p.Peer, fam.host, udpOther, nil)
				wantPing(t, "ping", p.Peer, fam.host, fam.echoReply)
				if err := f.UnblockElements(els); err != nil {
					t.Fatal(err)
				}
				wantTCP(t, "after unblock", p.Peer, fam.host, port, "ok")
				wantUDP(t, "udp after unblock", p.Peer, fam.host, udpPort, nil)
			})
		}
	}
}

// TestPacketsReject: reject gives a TCP reset (connect fails at once with
// ECONNREFUSED) and ICMP(v6) administratively prohibited for UDP and ICMP;
// plain, port-scoped and protocol-scoped, IPv4 and IPv6.
func TestPacketsReject(t *testing.T) {
	p := servePair(t)
	f := newFirewall(t, p.Host)
	for _, fam := range families(p) {
		t.Run(fam.name+"/plain", func(t *testing.T) {
			el := []firewall.Element{{Prefix: netip.PrefixFrom(fam.peer, fam.peer.BitLen()), Action: firewall.Reject, Timeout: time.Hour}}
			if err := f.Block(el); err != nil {
				t.Fatal(err)
			}
			wantTCP(t, "tcp", p.Peer, fam.host, port, "reset")
			wantUDP(t, "udp", p.Peer, fam.host, udpPort, fam.udpErr)
			wantPing(t, "ping", p.Peer, fam.host, fam.prohibited)
			if err := f.UnblockElements(el); err != nil {
				t.Fatal(err)
			}
			wantTCP(t, "after unblock", p.Peer, fam.host, port, "ok")
		})
		t.Run(fam.name+"/port", func(t *testing.T) {
			src := netip.PrefixFrom(fam.peer, fam.peer.BitLen()-8).Masked()
			el := []firewall.Element{
				{Prefix: src, Proto: unix.IPPROTO_TCP, Port: port, Action: firewall.Reject, Timeout: time.Hour},
				{Prefix: src, Proto: unix.IPPROTO_UDP, Port: udpPort, Action: firewall.Reject, Timeout: time.Hour},
			}
			if err := f.Block(el); err != nil {
				t.Fatal(err)
			}
			wantTCP(t, "blocked port", p.Peer, fam.host, port, "reset")
			wantTCP(t, "other port", p.Peer, fam.host, otherPort, "ok")
			wantUDP(t, "blocked udp port", p.Peer, fam.host, udpPort, fam.udpErr)
			wantUDP(t, "other udp port", p.Peer, fam.host, udpOther, nil)
			if err := f.UnblockElements(el); err != nil {
				t.Fatal(err)
			}
		})
		t.Run(fam.name+"/proto", func(t *testing.T) {
			icmp := uint8(unix.IPPROTO_ICMP)
			if fam.host.Is6() {
				icmp = unix.IPPROTO_ICMPV6
			}
			el := []firewall.Element{{Prefix: netip.PrefixFrom(fam.peer, fam.peer.BitLen()), Proto: icmp, Action: firewall.Reject, Timeout: time.Hour}}
			if err := f.Block(el); err != nil {
				t.Fatal(err)
			}
			wantPing(t, "ping", p.Peer, fam.host, fam.prohibited)
			wantTCP(t, "tcp", p.Peer, fam.host, port, "ok")
			if err := f.UnblockElements(el); err != nil {
				t.Fatal(err)
			}
			wantPing(t, "ping after unblock", p.Peer, fam.host, fam.echoReply)
		})
	}
}

// TestPacketsScopedExpiry: each scoped element ends on its own timeout in
// the kernel while the others stay.
func TestPacketsScopedExpiry(t *testing.T) {
	p := servePair(t)
	f := newFirewall(t, p.Host)
	var els []firewall.Element
	for _, fam := range families(p) {
		src := netip.PrefixFrom(fam.peer, fam.peer.BitLen())
		els = append(els,
			firewall.Element{Prefix: src, Proto: unix.IPPROTO_TCP, Port: port, Timeout: 3 * time.Second},
			firewall.Element{Prefix: src, Proto: unix.IPPROTO_TCP, Port: otherPort, Action: firewall.Reject, Timeout: time.Hour})
	}
	if err := f.Block(els); err != nil {
		t.Fatal(err)
	}
	for _, fam := range families(p) {
		wantTCP(t, fam.name+" short block", p.Peer, fam.host, port, "drop")
	}
	netns.Eventually(t, 20*time.Second, "the 3 s port blocks expire in the kernel", func() bool {
		return dialTCP(t, p.Peer, netip.AddrPortFrom(p.HostV4, port), time.Second) == nil &&
			dialTCP(t, p.Peer, netip.AddrPortFrom(p.HostV6, port), time.Second) == nil
	})
	for _, fam := range families(p) {
		wantTCP(t, fam.name+" long block", p.Peer, fam.host, otherPort, "reset")
	}
}

// TestPacketsActionPrecedence: where a drop and a reject cover the same
// packet, a port-scoped block decides for its port (prerouting runs before
// input); between two plain blocks, drop wins.
func TestPacketsActionPrecedence(t *testing.T) {
	p := servePair(t)
	f := newFirewall(t, p.Host)
	if err := f.Block([]firewall.Element{
		{Prefix: pfx("192.0.2.0/24"), Timeout: time.Hour},                                                                          // plain drop
		{Prefix: netip.PrefixFrom(p.PeerV4, 32), Action: firewall.Reject, Timeout: time.Hour},                                      // plain reject
		{Prefix: netip.PrefixFrom(p.PeerV4, 32), Proto: unix.IPPROTO_TCP, Port: port, Action: firewall.Reject, Timeout: time.Hour}, // port reject
	}); err != nil {
		t.Fatal(err)
	}
	wantTCP(t, "port-scoped reject over a plain drop", p.Peer, p.HostV4, port, "reset")
	wantTCP(t, "plain drop over a plain reject", p.Peer, p.HostV4, otherPort, "drop")
}
