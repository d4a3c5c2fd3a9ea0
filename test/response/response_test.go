package response_test

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/parryhq/parry/test/daemon"
	"github.com/parryhq/parry/test/netns"
)

// blockLeft returns how long the block of target has left per parry list,
// or false if it is not blocked.
func blockLeft(t testing.TB, d *daemon.Daemon, target string) (time.Duration, bool) {
	t.Helper()
	var resp struct {
		Blocks []struct {
			Target string    `json:"target"`
			Until  time.Time `json:"until"`
			Rule   string    `json:"rule"`
		} `json:"blocks"`
	}
	if err := json.Unmarshal([]byte(d.MustParry("list", "--json")), &resp); err != nil {
		t.Fatalf("list --json: %v", err)
	}
	for _, b := range resp.Blocks {
		if b.Target == target {
			return time.Until(b.Until), true
		}
	}
	return 0, false
}

// failLogins sends n auth_failure signals for ip and returns the last
// answer.
func failLogins(t testing.TB, d *daemon.Daemon, ip string, n int) string {
	t.Helper()
	var out string
	for range n {
		out = d.MustParry("signal", "auth_failure", "--ip", ip, "--user", "alice", "--source", "webapp")
	}
	return out
}

// TestAuthFailuresBlockPeer: five auth_failure signals for the peer's IP
// drop its packets; the management peer is untouched. Repeat offences
// escalate, also across a daemon restart.
func TestAuthFailuresBlockPeer(t *testing.T) {
	netns.RequireRoot(t)
	top := newTopology(t)
	d := newDaemon(t, top.host, "")
	d.Start()
	peer := top.peerAddr.String()

	if out := failLogins(t, d, peer, 4); !strings.Contains(out, "counted (auth-failure ip 192.0.2.2: 4/5 within 15m") {
		t.Fatalf("fourth signal: %q", out)
	}
	if !top.peer.CanConnect(top.hostAddr, port) {
		t.Fatal("peer blocked after 4 signals")
	}
	out := failLogins(t, d, peer, 1)
	if !strings.Contains(out, "decided block by rule auth-failure") || !strings.Contains(out, "[done]") {
		t.Fatalf("fifth signal: %q", out)
	}
	netns.Eventually(t, 5*time.Second, "peer's connections dropped", func() bool {
		return !top.peer.CanConnect(top.hostAddr, port)
	})
	if !top.mgmt.CanConnect(top.hostMgmtAddr, port) {
		t.Error("the other peer was blocked too")
	}
	if left, ok := blockLeft(t, d, peer); !ok || left > time.Hour || left < 59*time.Minute {
		t.Errorf("first block: %v left (blocked %v), want about 1h", left, ok)
	}

	// repeat offence: twice as long
	d.MustParry("unblock", peer)
	netns.Eventually(t, 5*time.Second, "peer reaches the host after unblock", func() bool {
		return top.peer.CanConnect(top.hostAddr, port)
	})
	failLogins(t, d, peer, 5)
	if left, ok := blockLeft(t, d, peer); !ok || left < 119*time.Minute || left > 2*time.Hour {
		t.Errorf("second block: %v left, want about 2h", left)
	}

	// the escalation memory survives a restart
	d.Stop()
	d.Start()
	d.MustParry("unblock", peer)
	failLogins(t, d, peer, 5)
	if left, ok := blockLeft(t, d, peer); !ok || left < 239*time.Minute || left > 4*time.Hour {
		t.Errorf("third block after restart: %v left, want about 4h", left)
	}
	netns.Eventually(t, 5*time.Second, "peer dropped again", func() bool {
		return !top.peer.CanConnect(top.hostAddr, port)
	})

	// the user key (alice, 5 of 20) is still counting
	if out := d.MustParry("status"); !strings.Contains(out, "policy: 9 rules; 5 signals (0 no rule, 0 rate-limited), 1 decisions; 1 keys counting, 1 offenders remembered") {
		t.Errorf("status after restart and one block: %q", out)
	}

	// unknown kinds are recorded, not acted on; malformed signals change nothing
	if out := d.MustParry("signal", "printer_on_fire", "--ip", "203.0.113.9"); !strings.Contains(out, "recorded, no rule") {
		t.Errorf("unknown kind: %q", out)
	}
	if _, errOut, code := d.Parry("signal", "auth failure"); code != 1 || !strings.Contains(errOut, "invalid_signal") {
		t.Errorf("bad kind: exit %d, %q", code, errOut)
	}
	if _, errOut, code := d.Parry("signal", "auth_failure", "--ip", "300.1.1.1"); code != 2 {
		t.Errorf("bad ip: exit %d, %q", code, errOut)
	}
}

// TestLockdown: an ordinary peer cannot open a TCP connection, the
// allowlisted management peer can, and after the lockdown's time the
// ordinary peer can again. Without an allowlist it needs --force.
func TestLockdown(t *testing.T) {
	netns.RequireRoot(t)
	top := newTopology(t)
	d := newDaemon(t, top.host, "")
	d.Start()

	_, errOut, code := d.Parry("lockdown", "--for", "1m")
	if code != 1 || !strings.Contains(errOut, "needs_force") || !strings.Contains(errOut, "--allow") {
		t.Fatalf("lockdown with an empty allowlist: exit %d, %q", code, errOut)
	}
	if _, errOut, code := d.Parry("lockdown", "--extend", "5m"); code != 1 || !strings.Contains(errOut, "no_lockdown") {
		t.Fatalf("extend without a lockdown: exit %d, %q", code, errOut)
	}
	if !top.peer.CanConnect(top.hostAddr, port) {
		t.Fatal("a refused lockdown changed something")
	}

	start := time.Now()
	out := d.MustParry("lockdown", "--for", "10s", "--allow", top.mgmtAddr.String(), "--reason", "e2e")
	if !strings.Contains(out, "lockdown: ACTIVE") {
		t.Errorf("lockdown output: %q", out)
	}
	if top.peer.CanConnect(top.hostAddr, port) {
		t.Error("ordinary peer connected during the lockdown")
	}
	if !top.mgmt.CanConnect(top.hostMgmtAddr, port) {
		t.Error("allowlisted management peer could not connect during the lockdown")
	}
	if out := d.MustParry("status"); !strings.Contains(out, "lockdown: ACTIVE") || !strings.Contains(out, "198.51.100.2") {
		t.Errorf("status during lockdown: %q", out)
	}
	netns.Eventually(t, 30*time.Second, "ordinary peer connects after the lockdown's time", func() bool {
		return top.peer.CanConnect(top.hostAddr, port)
	})
	if el := time.Since(start); el < 9*time.Second {
		t.Errorf("lockdown ended after %s, before its 10s", el)
	}
	if out := d.MustParry("status"); !strings.Contains(out, "lockdown: off") {
		t.Errorf("status after the lockdown: %q", out)
	}
}

// TestLockdownSurvivesRestart: the lockdown is in the store; a restarted
// daemon puts it back into a table that was deleted meanwhile, with its
// remaining time. --extend pushes its end; release ends it.
func TestLockdownSurvivesRestart(t *testing.T) {
	netns.RequireRoot(t)
	top := newTopology(t)
	d := newDaemon(t, top.host, "allowlist: [198.51.100.0/24]\n")
	d.Start()
	d.MustParry("lockdown", "--for", "2m", "--reason", "incident")
	if top.peer.CanConnect(top.hostAddr, port) {
		t.Fatal("ordinary peer connected during the lockdown")
	}
	d.Stop()
	top.host.MustRun(t, "nft", "delete", "table", "inet", "parry")
	if !top.peer.CanConnect(top.hostAddr, port) {
		t.Fatal("table deleted but the peer still cannot connect")
	}
	d.Start()
	if top.peer.CanConnect(top.hostAddr, port) {
		t.Error("lockdown not re-asserted after restart")
	}
	if !top.mgmt.CanConnect(top.hostMgmtAddr, port) {
		t.Error("configured allowlist not reachable after restart")
	}
	var st struct {
		Lockdown struct {
			Active bool      `json:"active"`
			Until  time.Time `json:"until"`
		} `json:"lockdown"`
	}
	json.Unmarshal([]byte(d.MustParry("status", "--json")), &st)
	if left := time.Until(st.Lockdown.Until); !st.Lockdown.Active || left > 2*time.Minute || left < time.Minute {
		t.Errorf("status after restart: %+v (%s left)", st.Lockdown, left)
	}
	before := st.Lockdown.Until
	d.MustParry("lockdown", "--extend", "10m")
	json.Unmarshal([]byte(d.MustParry("status", "--json")), &st)
	if got := st.Lockdown.Until.Sub(before); got < 10*time.Minute-time.Second || got > 10*time.Minute+time.Second {
		t.Errorf("extend moved the end by %s, want 10m", got)
	}
	d.MustParry("release", "--reason", "all clear")
	netns.Eventually(t, 5*time.Second, "peer connects after release", func() bool {
		return top.peer.CanConnect(top.hostAddr, port)
	})
}

// TestIsolate: --isolate drops outbound traffic too, except to the
// allowlist.
func TestIsolate(t *testing.T) {
	netns.RequireRoot(t)
	top := newTopology(t)
	top.peer.ServeTCP(t, port)
	top.mgmt.ServeTCP(t, port)
	netns.Eventually(t, 5*time.Second, "host reaches the peer", func() bool { return top.host.CanConnect(top.peerAddr, port) })
	d := newDaemon(t, top.host, "")
	d.Start()

	d.MustParry("lockdown", "--for", "1m", "--isolate", "--allow", top.mgmtAddr.String())
	if top.host.CanConnect(top.peerAddr, port) {
		t.Error("isolated host opened a connection to an ordinary peer")
	}
	if !top.host.CanConnect(top.mgmtAddr, port) {
		t.Error("isolated host could not reach the allowlisted management peer")
	}
	d.MustParry("release")
	netns.Eventually(t, 5*time.Second, "host reaches the peer after release", func() bool {
		return top.host.CanConnect(top.peerAddr, port)
	})
}

// TestUnprivilegedSender: a user allowed to send auth_failure may do so
// (and its signals block through the policy), but is refused other kinds,
// block and lockdown. A user not listed at all is refused every signal.
func TestUnprivilegedSender(t *testing.T) {
	netns.RequireRoot(t)
	top := newTopology(t)
	web := daemon.NewUser(t)
	other := daemon.NewUser(t)
	cfg := fmt.Sprintf("control:\n  socket_mode: \"0666\"\nresponse:\n  senders:\n    - {user: %s, kinds: [auth_failure]}\n", web.Name)
	d := newDaemon(t, top.host, cfg)
	d.Start()
	peer := top.peerAddr.String()

	refused := func(u *daemon.User, code string, args ...string) {
		t.Helper()
		out, errOut, exit := d.ParryAs(u, args...)
		if exit != 1 || !strings.Contains(errOut, code) {
			t.Errorf("%s as %s: exit %d, stdout %q, stderr %q; want exit 1 with %s", strings.Join(args, " "), u.Name, exit, out, errOut, code)
		}
	}
	refused(web, "forbidden", "block", peer, "--for", "1h")
	refused(web, "forbidden", "lockdown", "--for", "1m", "--force")
	refused(web, "forbidden", "release")
	refused(web, "forbidden", "signal", "scan_detected", "--ip", peer)
	refused(other, "forbidden", "signal", "auth_failure", "--ip", peer)
	if !top.peer.CanConnect(top.hostAddr, port) {
		t.Fatal("refused requests changed the firewall")
	}
	if out := d.MustParry("status"); !strings.Contains(out, "lockdown: off") {
		t.Errorf("refused lockdown took effect: %q", out)
	}
	for i := range 5 {
		out, errOut, code := d.ParryAs(web, "signal", "auth_failure", "--ip", peer, "--user", "alice", "--source", "webapp")
		if code != 0 {
			t.Fatalf("allowed signal %d: exit %d %q", i+1, code, errOut)
		}
		if i == 4 && !strings.Contains(out, "decided block") {
			t.Errorf("fifth allowed signal: %q", out)
		}
	}
	netns.Eventually(t, 5*time.Second, "peer dropped after the web user's signals", func() bool {
		return !top.peer.CanConnect(top.hostAddr, port)
	})
	var resp struct {
		Blocks []struct {
			Target, Sender, Rule string
		} `json:"blocks"`
	}
	json.Unmarshal([]byte(d.MustParry("list", "--json")), &resp)
	if len(resp.Blocks) != 1 || resp.Blocks[0].Rule != "auth-failure" || !strings.Contains(resp.Blocks[0].Sender, web.Name) {
		t.Errorf("block's cause: %+v, want rule auth-failure and sender %s", resp.Blocks, web.Name)
	}
}

// TestAuthFailuresBlockPeerIPv6: the same over IPv6.
func TestAuthFailuresBlockPeerIPv6(t *testing.T) {
	netns.RequireRoot(t)
	top := newTopology(t)
	host6, peer6 := netip.MustParseAddr("2001:db8::1"), netip.MustParseAddr("2001:db8::2")
	netns.Eventually(t, 10*time.Second, "peer reaches the host over IPv6", func() bool {
		return top.peer.CanConnect(host6, port)
	})
	d := newDaemon(t, top.host, "")
	d.Start()
	if out := failLogins(t, d, peer6.String(), 5); !strings.Contains(out, "decided block by rule auth-failure") {
		t.Fatalf("fifth signal: %q", out)
	}
	netns.Eventually(t, 5*time.Second, "peer's IPv6 connections dropped", func() bool {
		return !top.peer.CanConnect(host6, port)
	})
	if !top.peer.CanConnect(top.hostAddr, port) {
		t.Error("blocking the peer's IPv6 address dropped its IPv4 too")
	}
	if _, ok := blockLeft(t, d, "2001:db8::2"); !ok {
		t.Error("2001:db8::2 not in parry list")
	}
}
