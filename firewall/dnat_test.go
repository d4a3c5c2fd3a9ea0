package firewall_test

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/parryhq/parry/firewall"
	"github.com/parryhq/parry/test/netns"
	"golang.org/x/sys/unix"
)

// dockerNAT is how Docker publishes container ports with nftables (or
// iptables-nft): dnat in a prerouting chain of another table, at priority
// dstnat (-100). Published 8080 → container 80, 8081 → 81.
const dockerNAT = `
table ip dockernat {
	chain prerouting {
		type nat hook prerouting priority dstnat; policy accept;
		tcp dport 8080 dnat to 198.51.100.2:80
		tcp dport 8081 dnat to 198.51.100.2:81
	}
}
table ip6 dockernat {
	chain prerouting {
		type nat hook prerouting priority dstnat; policy accept;
		tcp dport 8080 dnat to [2001:db8:2::2]:80
		tcp dport 8081 dnat to [2001:db8:2::2]:81
	}
}
`

// TestPacketsDNAT: a client reaches a "container" behind the host through
// ports the host publishes by DNAT in another table. A blocked source cannot
// reach a published port, for a plain drop, a plain reject, and for
// port-scoped blocks, where the port is the one the client connected to
// (8080), not the container's (80) that the forward hook sees after DNAT.
func TestPacketsDNAT(t *testing.T) {
	client, host, ctr := netns.New(t), netns.New(t), netns.New(t)
	netns.Link(t, client, host, []netip.Prefix{pfx("192.0.2.2/24"), pfx("2001:db8:1::2/64")}, []netip.Prefix{pfx("192.0.2.1/24"), pfx("2001:db8:1::1/64")})
	netns.Link(t, host, ctr, []netip.Prefix{pfx("198.51.100.1/24"), pfx("2001:db8:2::1/64")}, []netip.Prefix{pfx("198.51.100.2/24"), pfx("2001:db8:2::2/64")})
	host.MustRun(t, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1")
	ctr.MustRun(t, "ip", "route", "add", "default", "via", "198.51.100.1")
	ctr.MustRun(t, "ip", "-6", "route", "add", "default", "via", "2001:db8:2::1")
	script := filepath.Join(t.TempDir(), "docker.nft")
	if err := os.WriteFile(script, []byte(dockerNAT), 0o600); err != nil {
		t.Fatal(err)
	}
	host.MustRun(t, "nft", "-f", script)
	ctr.ServeTCP(t, 80)
	ctr.ServeTCP(t, 81)
	f := newFirewall(t, host)
	tcp := uint8(unix.IPPROTO_TCP)
	for _, fam := range []struct {
		name           string
		published, src netip.Addr
	}{
		{"IPv4", netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("192.0.2.2")},
		{"IPv6", netip.MustParseAddr("2001:db8:1::1"), netip.MustParseAddr("2001:db8:1::2")},
	} {
		src := netip.PrefixFrom(fam.src, fam.src.BitLen())
		netns.Eventually(t, 10*time.Second, fam.name+": the client reaches the published port", func() bool {
			return dialTCP(t, client, netip.AddrPortFrom(fam.published, port), time.Second) == nil
		})
		for _, tc := range []struct {
			name   string
			block  []firewall.Element
			result map[int]string // published port → expected outcome
		}{
			{"plain drop", []firewall.Element{{Prefix: src}}, map[int]string{port: "drop", otherPort: "drop"}},
			{"plain reject", []firewall.Element{{Prefix: src, Action: firewall.Reject}}, map[int]string{port: "reset", otherPort: "reset"}},
			{"published port drop", []firewall.Element{{Prefix: src, Proto: tcp, Port: port}}, map[int]string{port: "drop", otherPort: "ok"}},
			{"published port reject", []firewall.Element{{Prefix: src, Proto: tcp, Port: port, Action: firewall.Reject}}, map[int]string{port: "reset", otherPort: "ok"}},
			{"prefix, published port", []firewall.Element{{Prefix: netip.PrefixFrom(fam.src, fam.src.BitLen()-8).Masked(), Proto: tcp, Port: port}}, map[int]string{port: "drop", otherPort: "ok"}},
			// The container's port is not what the client connected to.
			{"container port", []firewall.Element{{Prefix: src, Proto: tcp, Port: 80}}, map[int]string{port: "ok", otherPort: "ok"}},
		} {
			t.Run(fam.name+"/"+tc.name, func(t *testing.T) {
				for i := range tc.block {
					tc.block[i].Timeout = time.Hour
				}
				if err := f.Block(tc.block); err != nil {
					t.Fatal(err)
				}
				for _, p := range []int{port, otherPort} {
					wantTCP(t, fmt.Sprintf("published %d", p), client, fam.published, p, tc.result[p])
				}
				if err := f.UnblockElements(tc.block); err != nil {
					t.Fatal(err)
				}
				wantTCP(t, "after unblock", client, fam.published, port, "ok")
			})
		}
	}
}
