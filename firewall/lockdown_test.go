package firewall_test

import (
	"bufio"
	"context"
	"io"
	"net/netip"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/parryhq/parry/firewall"
	"github.com/parryhq/parry/test/netns"
)

// trio is a host with two peers: A (to be allowlisted) and B (ordinary).
type trio struct {
	host, a, b     *netns.NS
	hostA4, hostA6 netip.Addr // host's addresses on A's link
	hostB4, hostB6 netip.Addr // host's addresses on B's link
	a4, a6, b4, b6 netip.Addr
}

func newTrio(t *testing.T) *trio {
	p := netns.NewPair(t)
	b := netns.New(t)
	netns.Link(t, p.Host, b, []netip.Prefix{pfx("198.51.100.1/24"), pfx("2001:db8:2::1/64")}, []netip.Prefix{pfx("198.51.100.2/24"), pfx("2001:db8:2::2/64")})
	tr := &trio{
		host: p.Host, a: p.Peer, b: b,
		hostA4: p.HostV4, hostA6: p.HostV6, a4: p.PeerV4, a6: p.PeerV6,
		hostB4: netip.MustParseAddr("198.51.100.1"), hostB6: netip.MustParseAddr("2001:db8:2::1"),
		b4: netip.MustParseAddr("198.51.100.2"), b6: netip.MustParseAddr("2001:db8:2::2"),
	}
	tr.host.ServeTCP(t, port)
	return tr
}

func TestLockdownPackets(t *testing.T) {
	tr := newTrio(t)
	f := newFirewall(t, tr.host)
	// A's IPv4 address is on the permanent allowlist; its IPv6 address only
	// on this lockdown's allowlist. No traffic before the lockdown, so IPv6
	// neighbour discovery must work inside it.
	if err := f.SetAllow([]netip.Prefix{netip.PrefixFrom(tr.a4, 32)}); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := f.Lockdown(firewall.Lockdown{Allow: []netip.Prefix{netip.PrefixFrom(tr.a6, 128)}, Timeout: 16 * time.Second}); err != nil {
		t.Fatal(err)
	}
	l, active, err := f.LockdownState()
	if err != nil || !active || l.Isolate || l.Timeout <= 0 || l.Timeout > 16*time.Second || len(l.Allow) != 1 || l.Allow[0] != netip.PrefixFrom(tr.a6, 128) {
		t.Errorf("LockdownState = %+v, %v, %v", l, active, err)
	}
	wantReach(t, "ordinary peer, IPv4, in lockdown", tr.b, tr.hostB4, false)
	wantReach(t, "ordinary peer, IPv6, in lockdown", tr.b, tr.hostB6, false)
	wantReach(t, "permanently allowlisted peer, IPv4, in lockdown", tr.a, tr.hostA4, true)
	wantReach(t, "lockdown-allowlisted peer, IPv6, in lockdown", tr.a, tr.hostA6, true)
	if !tr.host.Ping(tr.hostA4) {
		t.Error("loopback traffic dropped in lockdown")
	}
	netns.Eventually(t, 30*time.Second, "the kernel ends the lockdown: ordinary peer reaches the host again", func() bool {
		return tr.b.Ping(tr.hostB4) && tr.b.CanConnect(tr.hostB4, port) && tr.b.Ping(tr.hostB6)
	})
	if time.Since(start) < 15*time.Second {
		t.Errorf("lockdown ended after %v, before its 16s timeout", time.Since(start))
	}
	if _, active, err := f.LockdownState(); err != nil || active {
		t.Errorf("LockdownState after expiry: active=%v err=%v", active, err)
	}
}

func TestLockdownRelease(t *testing.T) {
	tr := newTrio(t)
	f := newFirewall(t, tr.host)
	if err := f.Release(); err != nil {
		t.Fatalf("Release without a lockdown: %v", err)
	}
	if err := f.Lockdown(firewall.Lockdown{Timeout: time.Hour}); err != nil {
		t.Fatal(err)
	}
	wantReach(t, "ordinary peer in lockdown", tr.b, tr.hostB4, false)
	// Replacing the lockdown with one that allows B takes effect at once.
	if err := f.Lockdown(firewall.Lockdown{Allow: []netip.Prefix{pfx("198.51.100.0/24")}, Timeout: time.Hour}); err != nil {
		t.Fatal(err)
	}
	wantReach(t, "peer allowed by the replacing lockdown", tr.b, tr.hostB4, true)
	wantReach(t, "peer no longer allowed", tr.a, tr.hostA4, false)
	if err := f.Release(); err != nil {
		t.Fatal(err)
	}
	wantReach(t, "after release", tr.a, tr.hostA4, true)
	wantReach(t, "after release", tr.b, tr.hostB6, true)
	if got := listTable(t, tr.host, f.Table()); len(got.Sets["lockdown4"].Elems)+len(got.Sets["lockallow4"].Elems) != 0 {
		t.Errorf("lockdown sets not empty after release: %+v", got.Sets)
	}
}

var isolateCounter = regexp.MustCompile(`ip daddr @isolate4 counter packets (\d+)`)

// isolateDrops reads the counter of the output chain's isolate4 drop rule.
func isolateDrops(t *testing.T, ns *netns.NS, table string) int {
	t.Helper()
	m := isolateCounter.FindStringSubmatch(ns.MustRun(t, "nft", "list", "chain", "inet", table, "output"))
	if m == nil {
		t.Fatal("no isolate4 counter in the output chain")
	}
	n, _ := strconv.Atoi(m[1])
	return n
}

func TestIsolate(t *testing.T) {
	tr := newTrio(t)
	f := newFirewall(t, tr.host)
	if err := f.SetAllow([]netip.Prefix{netip.PrefixFrom(tr.a4, 32), netip.PrefixFrom(tr.a6, 128)}); err != nil {
		t.Fatal(err)
	}
	if !tr.host.Ping(tr.b4) {
		t.Fatal("host cannot ping B before isolation")
	}
	if err := f.Lockdown(firewall.Lockdown{Isolate: true, Timeout: time.Hour}); err != nil {
		t.Fatal(err)
	}
	if tr.host.Ping(tr.b4) || tr.host.Ping(tr.b6) {
		t.Error("isolated host can ping an ordinary peer")
	}
	// The drop happened on the way out, not only on the reply's way in.
	if n := isolateDrops(t, tr.host, f.Table()); n == 0 {
		t.Error("isolate4 drop counter is 0 after the host pinged out")
	}
	if !tr.host.Ping(tr.a4) || !tr.host.Ping(tr.a6) {
		t.Error("isolated host cannot ping an allowlisted peer")
	}
	if !tr.host.Ping(tr.hostA4) {
		t.Error("isolated host cannot reach itself")
	}
	if l, active, err := f.LockdownState(); err != nil || !active || !l.Isolate {
		t.Errorf("LockdownState = %+v, %v, %v; want active isolate", l, active, err)
	}
	if err := f.Release(); err != nil {
		t.Fatal(err)
	}
	if !tr.host.Ping(tr.b4) || !tr.host.Ping(tr.b6) {
		t.Error("host cannot ping B after release")
	}
}

func TestLockdownWithoutIsolateKeepsOutputOpen(t *testing.T) {
	tr := newTrio(t)
	f := newFirewall(t, tr.host)
	if err := f.Lockdown(firewall.Lockdown{Timeout: time.Hour}); err != nil {
		t.Fatal(err)
	}
	_ = tr.host.Ping(tr.b4) // the echo leaves; the reply is dropped on input
	if n := isolateDrops(t, tr.host, f.Table()); n != 0 {
		t.Errorf("output dropped %d packets in a lockdown without isolation", n)
	}
}

// TestLockdownDropsEstablished: a TCP connection opened by an ordinary peer
// before the lockdown stalls during it (its packets are dropped, not only
// new connections) and carries data again after the release.
func TestLockdownDropsEstablished(t *testing.T) {
	tr := newTrio(t)
	f := newFirewall(t, tr.host)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	srv := tr.host.Command(ctx, "socat", "TCP6-LISTEN:9090,reuseaddr,ipv6only=0", "EXEC:cat")
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cancel(); _ = srv.Wait() }()
	netns.Eventually(t, 5*time.Second, "echo server listening", func() bool {
		out, err := tr.host.Run("ss", "-Hltn", "sport = :9090")
		return err == nil && strings.TrimSpace(out) != ""
	})
	cli := tr.b.Command(ctx, "socat", "-", "TCP:198.51.100.1:9090")
	in, _ := cli.StdinPipe()
	out, _ := cli.StdoutPipe()
	if err := cli.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cancel(); _ = cli.Wait() }()
	lines := make(chan string, 10)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	echo := func(msg string, wait time.Duration) bool {
		if _, err := io.WriteString(in, msg+"\n"); err != nil {
			return false
		}
		select {
		case got := <-lines:
			return got == msg
		case <-time.After(wait):
			return false
		}
	}
	if !echo("before", 5*time.Second) {
		t.Fatal("no echo before the lockdown")
	}
	if err := f.Lockdown(firewall.Lockdown{Timeout: time.Hour}); err != nil {
		t.Fatal(err)
	}
	if echo("during", 1500*time.Millisecond) {
		t.Error("an established connection of an ordinary peer still carries data in lockdown")
	}
	if err := f.Release(); err != nil {
		t.Fatal(err)
	}
	// TCP retransmits "during"; its echo arrives once the lockdown is gone.
	select {
	case got := <-lines:
		if got != "during" {
			t.Errorf("after release got %q, want the retransmitted %q", got, "during")
		}
	case <-time.After(10 * time.Second):
		t.Error("connection did not recover after release")
	}
}
