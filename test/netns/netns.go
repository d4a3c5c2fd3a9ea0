// Package netns gives tests throwaway Linux network namespaces joined by veth
// pairs, so that firewall code runs against the real kernel without ever
// touching the firewall of the machine's own namespace.
//
// Every namespace is created with `ip netns add` under a unique name and
// removed by t.Cleanup. Nothing here changes the namespace the test runs in.
package netns

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/nftables"
)

// RequireRoot skips the test when not running as root, saying why. When the
// CI environment variable is set, a missing root is a failure instead: a CI
// run in which the kernel tests silently skipped is not a pass.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() == 0 {
		for _, tool := range []string{"ip", "nft"} {
			if _, err := exec.LookPath(tool); err != nil {
				t.Fatalf("%s not found in PATH: install iproute2 and nftables (apt-get install -y iproute2 nftables)", tool)
			}
		}
		return
	}
	if os.Getenv("CI") != "" {
		t.Fatalf("this test needs root (network namespaces and nftables); CI must run the suite as root")
	}
	t.Skip("skipping: needs root for network namespaces and nftables (run the suite as root; CI does)")
}

// NS is a network namespace created for one test.
type NS struct {
	Name string // name under /var/run/netns
	Path string // /var/run/netns/Name
}

// UniqueName returns a short random name with the given prefix; it fits in an
// interface name (15 bytes) when prefix is at most 6 bytes.
func UniqueName(prefix string) string {
	var b [4]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err)
	}
	return prefix + hex.EncodeToString(b[:])
}

// New creates a namespace with loopback up, removed when the test ends.
func New(t testing.TB) *NS {
	t.Helper()
	RequireRoot(t)
	name := UniqueName("pt")
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add %s: %v: %s", name, err, out)
	}
	ns := &NS{Name: name, Path: "/var/run/netns/" + name}
	t.Cleanup(func() {
		// Processes still inside keep the namespace alive but the name goes.
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v: %s", name, err, out)
		}
	})
	ns.MustRun(t, "ip", "link", "set", "lo", "up")
	return ns
}

// Command returns a command that runs inside the namespace, in a process
// group of its own: when ctx ends the whole group is killed, so the children
// a server forks (socat's fork option) end with it.
func (n *NS) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", n.Name, name}, args...)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	return cmd
}

// Run runs a command inside the namespace (bounded to 30 s) and returns its
// combined output.
func (n *NS) Run(name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := n.Command(ctx, name, args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s %s in %s: %w: %s", name, strings.Join(args, " "), n.Name, err, out)
	}
	return string(out), nil
}

// MustRun is Run that fails the test on error.
func (n *NS) MustRun(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := n.Run(name, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// Conn opens a google/nftables connection into the namespace. The namespace
// fd stays open until the test ends (a closed fd shows up later as ENOENT or
// "setns: bad file descriptor").
func (n *NS) Conn(t testing.TB, opts ...nftables.ConnOption) *nftables.Conn {
	t.Helper()
	f, err := os.Open(n.Path)
	if err != nil {
		t.Fatalf("open %s: %v", n.Path, err)
	}
	c, err := nftables.New(append([]nftables.ConnOption{nftables.WithNetNSFd(int(f.Fd())), nftables.AsLasting()}, opts...)...)
	if err != nil {
		f.Close()
		t.Fatalf("nftables.New in %s: %v", n.Name, err)
	}
	t.Cleanup(func() {
		c.CloseLasting()
		f.Close()
	})
	return c
}

// Link joins a and b with a veth pair, gives each end an address (a prefix
// such as 192.0.2.1/24 or 2001:db8::1/64) and brings both up. It returns the
// interface names in a and b.
func Link(t testing.TB, a, b *NS, aAddrs, bAddrs []netip.Prefix) (string, string) {
	t.Helper()
	ifA, ifB := UniqueName("va"), UniqueName("vb")
	if out, err := exec.Command("ip", "link", "add", ifA, "netns", a.Name, "type", "veth", "peer", "name", ifB, "netns", b.Name).CombinedOutput(); err != nil {
		t.Fatalf("ip link add veth: %v: %s", err, out)
	}
	for _, side := range []struct {
		ns    *NS
		ifc   string
		addrs []netip.Prefix
	}{{a, ifA, aAddrs}, {b, ifB, bAddrs}} {
		for _, p := range side.addrs {
			args := []string{"addr", "add", p.String(), "dev", side.ifc}
			if p.Addr().Is6() {
				args = []string{"-6", "addr", "add", p.String(), "dev", side.ifc, "nodad"}
			}
			side.ns.MustRun(t, "ip", args...)
		}
		side.ns.MustRun(t, "ip", "link", "set", side.ifc, "up")
	}
	return ifA, ifB
}

// Pair is the usual topology: a protected host and a peer on one link.
type Pair struct {
	Host, Peer     *NS
	HostV4, PeerV4 netip.Addr // 192.0.2.1, 192.0.2.2
	HostV6, PeerV6 netip.Addr // 2001:db8::1, 2001:db8::2
	HostIf, PeerIf string
}

// NewPair creates two namespaces joined by a veth pair with IPv4 and IPv6
// addresses from the documentation ranges (only ever inside the namespaces).
func NewPair(t testing.TB) *Pair {
	t.Helper()
	p := &Pair{
		Host: New(t), Peer: New(t),
		HostV4: netip.MustParseAddr("192.0.2.1"), PeerV4: netip.MustParseAddr("192.0.2.2"),
		HostV6: netip.MustParseAddr("2001:db8::1"), PeerV6: netip.MustParseAddr("2001:db8::2"),
	}
	p.HostIf, p.PeerIf = Link(t, p.Host, p.Peer,
		[]netip.Prefix{netip.PrefixFrom(p.HostV4, 24), netip.PrefixFrom(p.HostV6, 64)},
		[]netip.Prefix{netip.PrefixFrom(p.PeerV4, 24), netip.PrefixFrom(p.PeerV6, 64)})
	return p
}

// Ping reports whether an ICMP echo from ns to dst gets an answer within 2 s.
// It sends one echo every 0.5 s until the first reply, so that one packet
// lost while neighbour discovery runs on a loaded machine does not turn into
// a false "unreachable".
func (n *NS) Ping(dst netip.Addr) bool {
	_, err := n.Run("ping", "-n", "-q", "-c", "1", "-i", "0.5", "-w", "2", dst.String())
	return err == nil
}

// Eventually polls cond every 20 ms until it is true, and fails the test if
// the deadline passes first.
func Eventually(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	if !Poll(timeout, 20*time.Millisecond, cond) {
		t.Fatalf("timed out after %v waiting for: %s", timeout, what)
	}
}

// Poll checks cond every interval until it is true (Poll returns true) or
// timeout passes (false). It is the one polling loop of the test suites:
// benchmarks that time a condition pass a short interval for resolution.
func Poll(timeout, interval time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		<-tick.C
	}
	return true
}

// ServeTCP starts a TCP listener on port (IPv4 and IPv6) inside the namespace
// that accepts any number of connections, until the test ends. It uses socat,
// so the namespace's own firewall sees real traffic.
func (n *NS) ServeTCP(t testing.TB, port int) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	cmd := n.Command(ctx, "socat", fmt.Sprintf("TCP6-LISTEN:%d,fork,reuseaddr,ipv6only=0", port), "SYSTEM:echo parry")
	if err := cmd.Start(); err != nil {
		cancel()
		t.Fatalf("socat listen in %s: %v (apt-get install -y socat)", n.Name, err)
	}
	t.Cleanup(func() { cancel(); _ = cmd.Wait() })
	Eventually(t, 5*time.Second, fmt.Sprintf("listener on port %d in %s", port, n.Name), func() bool {
		out, err := n.Run("ss", "-Hltn", fmt.Sprintf("sport = :%d", port))
		return err == nil && strings.TrimSpace(out) != ""
	})
}

// CanConnect reports whether a TCP connection from ns to dst:port is
// established within 2 s (time for one SYN retransmission).
func (n *NS) CanConnect(dst netip.Addr, port int) bool {
	_, err := n.Run("socat", "-T2", "/dev/null", fmt.Sprintf("TCP:%s,connect-timeout=2", netip.AddrPortFrom(dst, uint16(port))))
	return err == nil
}

// HoldConnection starts an echo server (socat) on the host's port and a TCP
// connection to it from the peer over IPv4 that stays ESTABLISHED until the
// test ends, for tests that look at a host's live connections.
func (p *Pair) HoldConnection(t testing.TB, port int) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	srv := p.Host.Command(ctx, "socat", fmt.Sprintf("TCP4-LISTEN:%d,fork,reuseaddr", port), "EXEC:cat")
	if err := srv.Start(); err != nil {
		t.Fatalf("socat: %v (apt-get install -y socat)", err)
	}
	t.Cleanup(func() { cancel(); srv.Wait() }) // kills socat and the child it forked
	Eventually(t, 5*time.Second, fmt.Sprintf("listener on %d", port), func() bool {
		out, err := p.Host.Run("ss", "-Hltn", fmt.Sprintf("sport = :%d", port))
		return err == nil && strings.TrimSpace(out) != ""
	})
	cli := p.Peer.Command(ctx, "socat", "-", fmt.Sprintf("TCP4:%s", netip.AddrPortFrom(p.HostV4, uint16(port))))
	stdin, err := cli.StdinPipe() // held open: the connection stays ESTABLISHED
	if err != nil {
		t.Fatal(err)
	}
	if err := cli.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stdin.Close(); cancel(); cli.Wait() })
	Eventually(t, 5*time.Second, "connection from the peer", func() bool {
		out, err := p.Host.Run("ss", "-Htn", "state", "established", fmt.Sprintf("sport = :%d", port))
		return err == nil && strings.Contains(out, p.PeerV4.String())
	})
}
