package fleet_test

import (
	"bufio"
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nkeys"

	"github.com/parryhq/parry/agent/api"
	"github.com/parryhq/parry/agent/client"
	"github.com/parryhq/parry/firewall"
	"github.com/parryhq/parry/test/daemon"
	"github.com/parryhq/parry/test/netns"
)

// addresses on the shared segment
var (
	hubAddr  = netip.MustParseAddr("192.0.2.254")
	hostAddr = map[string]netip.Addr{"a": netip.MustParseAddr("192.0.2.1"), "b": netip.MustParseAddr("192.0.2.2"), "c": netip.MustParseAddr("192.0.2.3")}
	// the attacker's addresses, one per scenario
	xBlocked   = netip.MustParseAddr("192.0.2.100") // blocked on a, must be dropped by b and c
	xAllowedC  = netip.MustParseAddr("192.0.2.101") // in c's allowlist
	xForged    = netip.MustParseAddr("192.0.2.102") // named in a forged decision
	xWhileDown = netip.MustParseAddr("192.0.2.103") // blocked while c is stopped
	xNATSDown  = netip.MustParseAddr("192.0.2.104") // blocked while NATS is stopped
)

// lab is the whole topology.
type lab struct {
	t        testing.TB
	dir      string
	hub, x   *netns.NS
	natsd    *exec.Cmd
	natsDone chan struct{}
	users    []string // public nkeys the server accepts
	seeds    map[string]string
	hosts    map[string]*host
}

type host struct {
	name string
	ns   *netns.NS
	d    *daemon.Daemon
	nft  *firewall.NFT
}

func newLab(t testing.TB) *lab {
	t.Helper()
	netns.RequireRoot(t)
	l := &lab{t: t, dir: t.TempDir(), seeds: map[string]string{}, hosts: map[string]*host{}}
	l.hub = netns.New(t)
	l.hub.MustRun(t, "ip", "link", "add", "br0", "type", "bridge")
	l.hub.MustRun(t, "ip", "addr", "add", hubAddr.String()+"/24", "dev", "br0")
	l.hub.MustRun(t, "ip", "link", "set", "br0", "up")
	attach := func(ns *netns.NS, addrs ...netip.Addr) {
		var ps []netip.Prefix
		for _, a := range addrs {
			ps = append(ps, netip.PrefixFrom(a, 24))
		}
		_, hubIf := netns.Link(t, ns, l.hub, ps, nil)
		l.hub.MustRun(t, "ip", "link", "set", hubIf, "master", "br0")
	}
	for _, name := range []string{"a", "b", "c", "mallory"} {
		kp, err := nkeys.CreateUser()
		if err != nil {
			t.Fatal(err)
		}
		seed, _ := kp.Seed()
		pub, _ := kp.PublicKey()
		l.seeds[name] = string(seed)
		l.users = append(l.users, pub)
		if err := os.WriteFile(filepath.Join(l.dir, name+".nk"), seed, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	for _, name := range []string{"a", "b", "c"} {
		h := &host{name: name, ns: netns.New(t)}
		attach(h.ns, hostAddr[name])
		var err error
		if h.nft, err = firewall.New(h.ns.Conn(t), firewall.Config{Table: "parry"}); err != nil {
			t.Fatal(err)
		}
		l.hosts[name] = h
	}
	l.x = netns.New(t)
	attach(l.x, xBlocked, xAllowedC, xForged, xWhileDown, xNATSDown)
	l.startNATS()
	t.Cleanup(l.stopNATS)
	// Made after t.Cleanup(l.stopNATS), so the daemons stop before NATS.
	for _, name := range []string{"a", "b", "c"} {
		h := l.hosts[name]
		h.d = daemon.New(t, h.ns, daemon.Options{Config: l.config(h)})
		h.d.Start()
	}
	return l
}

func (l *lab) trusted() string {
	var b strings.Builder
	for _, name := range []string{"a", "b", "c"} {
		kp, _ := nkeys.FromSeed([]byte(l.seeds[name]))
		pub, _ := kp.PublicKey()
		fmt.Fprintf(&b, "    %s: %s\n", name, pub)
	}
	return b.String()
}

// config is host h's config text, with extra YAML appended.
func (l *lab) config(h *host, extra ...string) string {
	allow := "[]"
	if h.name == "c" {
		allow = `["` + xAllowedC.String() + `/32"]`
	}
	return fmt.Sprintf(`allowlist: %s
fleet:
  servers: ["nats://%s:4222"]
  name: %s
  credentials: %s
  catchup_timeout: 15s
  trusted:
%s%s`, allow, hubAddr, h.name, filepath.Join(l.dir, h.name+".nk"), l.trusted(), strings.Join(extra, ""))
}

func (l *lab) startNATS() {
	t := l.t
	t.Helper()
	cmd := l.hub.Command(context.Background(), os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), envNATSD+"=1",
		"PARRY_NATSD_LISTEN="+hubAddr.String()+":4222",
		"PARRY_NATSD_STORE="+filepath.Join(l.dir, "nats"),
		"PARRY_NATSD_USERS="+strings.Join(l.users, " "))
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("start nats-server in %s: %v", l.hub.Name, err)
	}
	l.natsd, l.natsDone = cmd, make(chan struct{})
	ready := make(chan bool, 1)
	go func(done chan struct{}) {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if sc.Text() == "READY" {
				ready <- true
			}
		}
		_ = cmd.Wait()
		close(done)
	}(l.natsDone)
	select {
	case <-ready:
	case <-time.After(30 * time.Second):
		t.Fatal("nats-server not ready within 30s")
	}
}

func (l *lab) stopNATS() {
	if l.natsd == nil {
		return
	}
	_ = l.natsd.Process.Signal(syscall.SIGTERM)
	select {
	case <-l.natsDone:
	case <-time.After(15 * time.Second):
		_ = l.natsd.Process.Kill()
		<-l.natsDone
	}
	l.natsd = nil
}

// call sends one request to a host's parryd.
func (h *host) call(t testing.TB, req map[string]any, out any) error {
	t.Helper()
	c, err := client.Dial(h.d.Socket)
	if err != nil {
		return err
	}
	defer c.Close()
	return c.Call(req, out)
}

func (h *host) block(t testing.TB, target netip.Addr, reason string) {
	t.Helper()
	if err := h.call(t, map[string]any{"op": "block", "targets": []string{target.String()}, "for": "1h", "reason": reason}, nil); err != nil {
		t.Fatalf("block %s on %s: %v", target, h.name, err)
	}
}

func (h *host) status(t testing.TB) api.Status {
	t.Helper()
	var st api.Status
	if err := h.call(t, map[string]any{"op": "status"}, &st); err != nil {
		t.Fatalf("status of %s: %v", h.name, err)
	}
	if st.Fleet == nil {
		t.Fatalf("status of %s has no fleet section", h.name)
	}
	return st
}

// inKernel reports whether addr is in the host's block sets.
func (h *host) inKernel(t testing.TB, addr netip.Addr) bool {
	t.Helper()
	els, err := h.nft.Elements()
	if err != nil {
		t.Fatalf("elements of %s: %v", h.name, err)
	}
	for _, e := range els {
		if e.Prefix.Contains(addr) {
			return true
		}
	}
	return false
}

// reaches reports whether an ICMP echo from the attacker namespace, sent
// from src, is answered by dst within 1 s.
func (l *lab) reaches(src, dst netip.Addr) bool {
	_, err := l.x.Run("ping", "-n", "-q", "-c", "1", "-W", "1", "-I", src.String(), dst.String())
	return err == nil
}
