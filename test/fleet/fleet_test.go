package fleet_test

import (
	"context"
	"encoding/json"
	"net/netip"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/parryhq/parry/agent/api"
	"github.com/parryhq/parry/test/netns"
)

// TestFleetThreeHosts is the fleet end to end: three parryd processes in
// three namespaces, one nats-server in a fourth, real packets from a fifth.
// The steps build on each other, so they run in order in one test.
func TestFleetThreeHosts(t *testing.T) {
	l := newLab(t)
	a, b, c := l.hosts["a"], l.hosts["b"], l.hosts["c"]
	for _, h := range []*host{a, b, c} {
		if st := h.status(t).Fleet; !st.Connected || !st.CaughtUp {
			t.Fatalf("%s after READY: fleet %+v; want connected and caught up", h.name, st)
		}
		if !l.reaches(xBlocked, hostAddr[h.name]) {
			t.Fatalf("before any block, %s does not answer %s", h.name, xBlocked)
		}
	}

	// A block on a is enforced on b and c, with real packets.
	a.block(t, xBlocked, "brute force")
	for _, h := range []*host{b, c} {
		netns.Eventually(t, 10*time.Second, xBlocked.String()+" dropped by "+h.name, func() bool { return !l.reaches(xBlocked, hostAddr[h.name]) })
	}
	var list struct{ Blocks []api.BlockInfo }
	if err := b.call(t, map[string]any{"op": "list"}, &list); err != nil {
		t.Fatal(err)
	}
	if len(list.Blocks) != 1 || list.Blocks[0].Origin != "a" || list.Blocks[0].Source != "fleet" {
		t.Errorf("b lists %+v; want one block with origin a, source fleet", list.Blocks)
	}
	if out := b.d.MustParry("list"); !strings.Contains(out, "ORIGIN") || !regexp.MustCompile(`192\.0\.2\.100\s.*\sa\n`).MatchString(out) {
		t.Errorf("parry list on b:\n%s\nwant 192.0.2.100 with origin a", out)
	}
	if out := b.d.MustParry("status"); !strings.Contains(out, `fleet: connected to nats://192.0.2.254:4222 as "b", caught up`) {
		t.Errorf("parry status on b:\n%s\nwant the fleet connected and caught up", out)
	}

	// A decision for an address in c's allowlist: b enforces it, c alone refuses.
	a.block(t, xAllowedC, "scanner")
	netns.Eventually(t, 10*time.Second, "b drops "+xAllowedC.String(), func() bool { return !l.reaches(xAllowedC, hostAddr["b"]) })
	netns.Eventually(t, 10*time.Second, "c refuses", func() bool { return c.status(t).Fleet.Refused == 1 })
	if !l.reaches(xAllowedC, hostAddr["c"]) || c.inKernel(t, xAllowedC) {
		t.Errorf("c blocked %s, which its allowlist protects", xAllowedC)
	}
	if !auditHas(t, c, "refuse", xAllowedC.String(), "a") {
		t.Errorf("c's audit log has no refusal of %s from origin a", xAllowedC)
	}

	// c stopped, a block made meanwhile: c restarted misses nothing, and has
	// it in its kernel by the time it reports READY.
	c.d.Stop()
	a.block(t, xWhileDown, "while c was away")
	netns.Eventually(t, 10*time.Second, "b drops "+xWhileDown.String(), func() bool { return b.inKernel(t, xWhileDown) })
	c.d.Start()
	if !c.inKernel(t, xWhileDown) || !c.inKernel(t, xBlocked) {
		t.Fatalf("c at READY: %s in kernel %v, %s in kernel %v; want both", xWhileDown, c.inKernel(t, xWhileDown), xBlocked, c.inKernel(t, xBlocked))
	}
	if l.reaches(xWhileDown, hostAddr["c"]) {
		t.Errorf("restarted c answers %s", xWhileDown)
	}
	t.Logf("c restarted and caught up in %v (start to READY=1)", c.d.ReadyAfter())

	// NATS stopped: local enforcement goes on and the decision queues; NATS
	// started again: nothing is lost.
	l.stopNATS()
	netns.Eventually(t, 10*time.Second, "a sees NATS gone", func() bool { return !a.status(t).Fleet.Connected })
	a.block(t, xNATSDown, "while NATS was down")
	if !a.inKernel(t, xNATSDown) {
		t.Fatal("with NATS down, a did not enforce its own block")
	}
	if st := a.status(t).Fleet; st.Queued != 1 {
		t.Errorf("a's queue with NATS down: %d; want 1", st.Queued)
	}
	if out := a.d.MustParry("status"); !strings.Contains(out, "fleet: DISCONNECTED") || !strings.Contains(out, "fleet queue: 1/10000 waiting") {
		t.Errorf("parry status on a with NATS down:\n%s\nwant DISCONNECTED and 1 queued", out)
	}
	l.startNATS()
	for _, h := range []*host{b, c} {
		netns.Eventually(t, 20*time.Second, h.name+" drops "+xNATSDown.String()+" after NATS is back", func() bool { return !l.reaches(xNATSDown, hostAddr[h.name]) })
	}
	// The stream survived the restart: b, wiped of all state (store and
	// kernel table), catches up on every active block before READY.
	b.d.Stop()
	if err := os.RemoveAll(b.d.StateDir); err != nil {
		t.Fatal(err)
	}
	b.ns.MustRun(t, "nft", "delete", "table", "inet", "parry")
	b.d.Start()
	for _, x := range []netip.Addr{xBlocked, xAllowedC, xWhileDown, xNATSDown} {
		if !b.inKernel(t, x) {
			t.Errorf("wiped b at READY lacks %s", x)
		}
	}

	// Forgery: an unauthenticated client cannot connect at all; an
	// authenticated but untrusted one gets a decision claiming to be from a
	// into the stream, and every agent rejects it.
	res := l.forge(t, xForged)
	if !strings.Contains(strings.ToLower(res["anonymous"]), "authorization") {
		t.Errorf("anonymous connect: %q; want an authorization violation", res["anonymous"])
	}
	if res["untrusted"] != "stored" {
		t.Fatalf("the untrusted publisher did not get its forgery stored (%q); the test proves nothing", res["untrusted"])
	}
	for _, h := range []*host{a, b, c} {
		netns.Eventually(t, 10*time.Second, h.name+" rejects the forgery", func() bool { return h.status(t).Fleet.Rejected > 0 })
		if h.inKernel(t, xForged) || !l.reaches(xForged, hostAddr[h.name]) {
			t.Errorf("%s enforced a forged decision", h.name)
		}
	}
}

// forge runs the attacker helper inside the attacker namespace.
func (l *lab) forge(t *testing.T, target netip.Addr) map[string]string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := l.x.Command(ctx, os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), envForge+"=1", "PARRY_FORGE_URL=nats://"+hubAddr.String()+":4222",
		"PARRY_FORGE_TARGET="+target.String(), "PARRY_FORGE_SEED="+l.seeds["mallory"])
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("forge helper: %v: %s", err, out)
	}
	res := map[string]string{}
	if err := json.Unmarshal(out, &res); err != nil {
		t.Fatalf("forge helper output %q: %v", out, err)
	}
	return res
}

// auditHas reports whether the host's audit log has an event of kind ev
// about target from origin.
func auditHas(t *testing.T, h *host, ev, target, origin string) bool {
	t.Helper()
	for _, f := range h.d.AuditEvents(ev) {
		b, _ := json.Marshal(f)
		if strings.Contains(string(b), target) && strings.Contains(string(b), `"origin":"`+origin+`"`) {
			return true
		}
	}
	return false
}
