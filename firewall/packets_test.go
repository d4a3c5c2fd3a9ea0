package firewall_test

import (
	"net/netip"
	"testing"
	"time"

	"github.com/parryhq/parry/firewall"
	"github.com/parryhq/parry/test/netns"
)

const port = 8080

// reach reports whether from reaches dst by ping and by TCP to port.
func reach(from *netns.NS, dst netip.Addr) (ping, tcp bool) {
	return from.Ping(dst), from.CanConnect(dst, port)
}

func wantReach(t *testing.T, what string, from *netns.NS, dst netip.Addr, want bool) {
	t.Helper()
	ping, tcp := reach(from, dst)
	if ping != want || tcp != want {
		t.Errorf("%s: ping=%v tcp=%v, want both %v", what, ping, tcp, want)
	}
}

func TestPacketsBlockInput(t *testing.T) {
	p := netns.NewPair(t)
	p.Host.ServeTCP(t, port)
	f := newFirewall(t, p.Host)
	for _, tc := range []struct {
		name   string
		block  netip.Prefix
		dst    netip.Addr
		source netip.Addr
	}{
		{"IPv4 address", netip.PrefixFrom(p.PeerV4, 32), p.HostV4, p.PeerV4},
		{"IPv4 CIDR", pfx("192.0.2.0/25"), p.HostV4, p.PeerV4},
		{"IPv6 address", netip.PrefixFrom(p.PeerV6, 128), p.HostV6, p.PeerV6},
		{"IPv6 CIDR", pfx("2001:db8::/64"), p.HostV6, p.PeerV6},
	} {
		t.Run(tc.name, func(t *testing.T) {
			wantReach(t, "before block", p.Peer, tc.dst, true)
			if err := f.Block([]firewall.Element{{Prefix: tc.block, Timeout: time.Hour}}); err != nil {
				t.Fatal(err)
			}
			wantReach(t, "while blocked", p.Peer, tc.dst, false)
			// The host still reaches itself over loopback while its own
			// address is inside a blocked CIDR.
			if !p.Host.Ping(tc.dst) {
				t.Error("host cannot ping its own address while blocked")
			}
			if err := f.Unblock([]netip.Prefix{tc.block}); err != nil {
				t.Fatal(err)
			}
			wantReach(t, "after unblock", p.Peer, tc.dst, true)
		})
	}
}

func TestPacketsExpiry(t *testing.T) {
	p := netns.NewPair(t)
	p.Host.ServeTCP(t, port)
	f := newFirewall(t, p.Host)
	if err := f.Block([]firewall.Element{
		{Prefix: netip.PrefixFrom(p.PeerV4, 32), Timeout: 6 * time.Second},
		{Prefix: pfx("2001:db8::/64"), Timeout: 6 * time.Second},
	}); err != nil {
		t.Fatal(err)
	}
	if p.Peer.Ping(p.HostV4) || p.Peer.Ping(p.HostV6) {
		t.Fatal("peer reaches host right after the block")
	}
	netns.Eventually(t, 20*time.Second, "peer reaches host again after the kernel expired the block", func() bool {
		return p.Peer.Ping(p.HostV4) && p.Peer.CanConnect(p.HostV4, port) && p.Peer.Ping(p.HostV6) && p.Peer.CanConnect(p.HostV6, port)
	})
}

func TestPacketsAllowlistBeatsBlock(t *testing.T) {
	p := netns.NewPair(t)
	p.Host.ServeTCP(t, port)
	f := newFirewall(t, p.Host)
	if err := f.SetAllow([]netip.Prefix{netip.PrefixFrom(p.PeerV4, 32)}); err != nil {
		t.Fatal(err)
	}
	if err := f.Block([]firewall.Element{{Prefix: pfx("192.0.2.0/24"), Timeout: time.Hour}, {Prefix: netip.PrefixFrom(p.PeerV6, 128), Timeout: time.Hour}}); err != nil {
		t.Fatal(err)
	}
	wantReach(t, "allowlisted IPv4 peer inside a blocked CIDR", p.Peer, p.HostV4, true)
	wantReach(t, "blocked IPv6 address of the same peer (not allowlisted)", p.Peer, p.HostV6, false)
}

// TestPacketsForward blocks in a router namespace: the forward hook drops
// traffic from a blocked source to a host behind the router.
func TestPacketsForward(t *testing.T) {
	left, router, right := netns.New(t), netns.New(t), netns.New(t)
	netns.Link(t, left, router, []netip.Prefix{pfx("192.0.2.2/24"), pfx("2001:db8:1::2/64")}, []netip.Prefix{pfx("192.0.2.1/24"), pfx("2001:db8:1::1/64")})
	netns.Link(t, router, right, []netip.Prefix{pfx("198.51.100.1/24"), pfx("2001:db8:2::1/64")}, []netip.Prefix{pfx("198.51.100.2/24"), pfx("2001:db8:2::2/64")})
	router.MustRun(t, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1")
	left.MustRun(t, "ip", "route", "add", "default", "via", "192.0.2.1")
	left.MustRun(t, "ip", "-6", "route", "add", "default", "via", "2001:db8:1::1")
	right.MustRun(t, "ip", "route", "add", "default", "via", "198.51.100.1")
	right.MustRun(t, "ip", "-6", "route", "add", "default", "via", "2001:db8:2::1")
	right.ServeTCP(t, port)
	rightV4, rightV6 := netip.MustParseAddr("198.51.100.2"), netip.MustParseAddr("2001:db8:2::2")
	netns.Eventually(t, 10*time.Second, "left reaches right through the router", func() bool {
		return left.Ping(rightV4) && left.Ping(rightV6)
	})
	f := newFirewall(t, router)
	if err := f.Block([]firewall.Element{{Prefix: pfx("192.0.2.2/32"), Timeout: time.Hour}, {Prefix: pfx("2001:db8:1::/64"), Timeout: time.Hour}}); err != nil {
		t.Fatal(err)
	}
	wantReach(t, "blocked source through the router (IPv4)", left, rightV4, false)
	wantReach(t, "blocked source through the router (IPv6)", left, rightV6, false)
	if err := f.Unblock([]netip.Prefix{pfx("192.0.2.2/32"), pfx("2001:db8:1::/64")}); err != nil {
		t.Fatal(err)
	}
	wantReach(t, "after unblock (IPv4)", left, rightV4, true)
	wantReach(t, "after unblock (IPv6)", left, rightV6, true)
}
