// Package response_test runs the response features end to end: parryd in a
// throwaway network namespace, the parry CLI as a real process (also as an
// unprivileged user), real TCP connections from peer namespaces.
package response_test

import (
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/parryhq/parry/test/daemon"
	"github.com/parryhq/parry/test/netns"
	"github.com/parryhq/parry/test/parrybin"
)

func TestMain(m *testing.M) {
	code := m.Run()
	parrybin.Remove()
	os.Exit(code)
}

// newDaemon prepares (does not start) a parryd in ns on config (YAML; the
// harness sets the state dir, socket and table). The integrity watcher is
// off unless config has an integrity section: by default it watches the
// host's /etc, where other tests' useradd and userdel land, and its
// integrity_violation signals would show up in the policy counts these
// tests assert on.
func newDaemon(t testing.TB, ns *netns.NS, config string) *daemon.Daemon {
	t.Helper()
	if !strings.Contains(config, "integrity:") {
		config = "integrity:\n  enabled: false\n" + config
	}
	return daemon.New(t, ns, daemon.Options{Config: config})
}

// topology is a protected host, an ordinary peer on 192.0.2.0/24 and a
// management peer on 198.51.100.0/24, with a TCP service on the host.
type topology struct {
	host, peer, mgmt *netns.NS
	hostAddr         netip.Addr // as the peer sees it
	hostMgmtAddr     netip.Addr // as the management peer sees it
	peerAddr         netip.Addr
	mgmtAddr         netip.Addr
}

const port = 8080

func newTopology(t *testing.T) *topology {
	t.Helper()
	pair := netns.NewPair(t)
	mgmt := netns.New(t)
	netns.Link(t, pair.Host, mgmt,
		[]netip.Prefix{netip.MustParsePrefix("198.51.100.1/24")}, []netip.Prefix{netip.MustParsePrefix("198.51.100.2/24")})
	top := &topology{host: pair.Host, peer: pair.Peer, mgmt: mgmt,
		hostAddr: netip.MustParseAddr("192.0.2.1"), hostMgmtAddr: netip.MustParseAddr("198.51.100.1"),
		peerAddr: netip.MustParseAddr("192.0.2.2"), mgmtAddr: netip.MustParseAddr("198.51.100.2")}
	top.host.ServeTCP(t, port)
	netns.Eventually(t, 5*time.Second, "peer reaches the host's service", func() bool {
		return top.peer.CanConnect(top.hostAddr, port)
	})
	netns.Eventually(t, 5*time.Second, "management peer reaches the host's service", func() bool {
		return top.mgmt.CanConnect(top.hostMgmtAddr, port)
	})
	return top
}
