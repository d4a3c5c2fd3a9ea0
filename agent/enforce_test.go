package agent

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/parryhq/parry/agent/api"
	"github.com/parryhq/parry/agent/audit"
	"github.com/parryhq/parry/agent/enforce"
	"github.com/parryhq/parry/response"
)

var t0 = time.Date(2026, 11, 27, 0, 0, 0, 0, time.UTC)

func pfx(ss ...string) []netip.Prefix {
	var out []netip.Prefix
	for _, s := range ss {
		p, err := api.ParseTarget(s)
		if err != nil {
			panic(err)
		}
		out = append(out, p)
	}
	return out
}

func TestEnforceBlockUnblockExpire(t *testing.T) {
	clk := &clock{t: t0}
	fw := newFakeFW()
	cfg := testConfig(t)
	d := newTestDaemon(t, cfg, fw, clk)
	ctx := context.Background()
	var seen []string
	d.path.Observe(func(dec response.Decision, o enforce.Outcome, _ enforce.State) {
		if o.Err != nil {
			seen = append(seen, "refused:"+api.CodeOf(o.Err))
			return
		}
		seen = append(seen, string(dec.Action))
	})

	out, err := d.path.Enforce(ctx, response.Decision{Action: response.ActionBlock, Targets: pfx("203.0.113.7", "198.51.100.0/24"), Until: t0.Add(time.Hour), Reason: "r"})
	if err == nil {
		t.Fatalf("198.51.100.0/24 contains the allowlisted 198.51.100.10: want a refusal, got %+v", out)
	}
	if api.CodeOf(err) != api.CodeAllowlisted || fw.state() != "" {
		t.Fatalf("code %s, kernel %q: an atomic refusal must change nothing", api.CodeOf(err), fw.state())
	}
	out, err = d.path.EnforceWith(ctx, response.Decision{Action: response.ActionBlock, Targets: pfx("203.0.113.7", "198.51.100.0/24", "2001:db8:5::/48"), Until: t0.Add(time.Hour)}, enforce.EnforceOptions{Partial: true})
	if err != nil || out.Added != 2 || len(out.Refused) != 1 || out.Refused[0].Target != "198.51.100.0/24" {
		t.Fatalf("partial block: %+v %v", out, err)
	}
	want := "block 2001:db8:5::/48 timeout=1h0m0s\nblock 203.0.113.7/32 timeout=1h0m0s"
	if diff := cmp.Diff(want, fw.state()); diff != "" {
		t.Fatalf("kernel (-want +got):\n%s", diff)
	}
	// Re-block updates the expiry.
	clk.Add(10 * time.Minute)
	out, err = d.path.Enforce(ctx, response.Decision{Action: response.ActionBlock, Targets: pfx("203.0.113.7"), Until: clk.Now().Add(2 * time.Hour)})
	if err != nil || out.Updated != 1 || out.Added != 0 {
		t.Fatalf("re-block: %+v %v", out, err)
	}
	// A CIDR inside a blocked CIDR is a record of its own; the kernel holds
	// their union: the /64 until its later end, the rest of the /48 until
	// the /48's. Unblocking the /64 gives the /48 back whole.
	out, err = d.path.Enforce(ctx, response.Decision{Action: response.ActionBlock, Targets: pfx("2001:db8:5:1::/64"), Until: clk.Now().Add(time.Hour)})
	if err != nil || out.Added != 1 {
		t.Fatalf("CIDR inside a /48: %+v %v", out, err)
	}
	if st := fw.state(); !strings.Contains(st, "block 2001:db8:5:1::/64 timeout=1h0m0s") || !strings.Contains(st, "block 2001:db8:5::/64 timeout=50m0s") ||
		strings.Contains(st, "2001:db8:5::/48") {
		t.Fatalf("kernel after a /64 inside the /48:\n%s", st)
	}
	if out, err = d.path.Enforce(ctx, response.Decision{Action: response.ActionUnblock, Targets: pfx("2001:db8:5:1::/64"), Admin: true}); err != nil || out.Removed != 1 {
		t.Fatalf("unblock the /64: %+v %v", out, err)
	}
	if st := fw.state(); !strings.Contains(st, "block 2001:db8:5::/48 timeout=50m0s") || strings.Contains(st, "/64") {
		t.Fatalf("kernel after unblocking the /64:\n%s", st)
	}
	// Single addresses live in the hash sets: an address inside a blocked
	// CIDR, or a CIDR around a blocked address, is fine.
	out, err = d.path.Enforce(ctx, response.Decision{Action: response.ActionBlock, Targets: pfx("2001:db8:5:1::7", "203.0.113.0/24"), Until: clk.Now().Add(time.Hour)})
	if err != nil || out.Added != 2 {
		t.Fatalf("address inside a CIDR, CIDR around an address: %+v %v", out, err)
	}
	out, err = d.path.Enforce(ctx, response.Decision{Action: response.ActionUnblock, Targets: pfx("2001:db8:5:1::7", "203.0.113.0/24")})
	if err != nil || out.Removed != 2 {
		t.Fatalf("unblock them again: %+v %v", out, err)
	}
	// Unblock.
	out, err = d.path.Enforce(ctx, response.Decision{Action: response.ActionUnblock, Targets: pfx("203.0.113.7", "203.0.113.8")})
	if err != nil || out.Removed != 1 || len(out.NotFound) != 1 {
		t.Fatalf("unblock: %+v %v", out, err)
	}
	// Expiry: the /48 had 1h from t0.
	clk.Add(51 * time.Minute)
	d.path.Prune()
	if n := statusOf(t, d).ActiveBlocks; n != 0 {
		t.Fatalf("after expiry: %d active", n)
	}
	if st, err := d.path.Stats(context.Background()); err != nil || st.Decisions != 0 {
		t.Errorf("decisions leak after every block ended: %d left (%v)", st.Decisions, err)
	}
	if diff := cmp.Diff([]string{"refused:allowlisted", "block", "block", "block", "unblock", "block", "unblock", "unblock"}, seen); diff != "" {
		t.Errorf("observer calls (-want +got):\n%s", diff)
	}
	d.audit.Sync()
	res, err := audit.VerifyFile(filepath.Join(cfg.StateDir, "audit.log"))
	if err != nil || !res.OK || res.Lines < 7 {
		t.Errorf("audit: %+v %v", res, err)
	}
}

func TestFirewallFailureChangesNothing(t *testing.T) {
	clk := &clock{t: t0}
	fw := newFakeFW()
	cfg := testConfig(t)
	d := newTestDaemon(t, cfg, fw, clk)
	ctx := context.Background()
	if _, err := d.path.Enforce(ctx, response.Decision{Action: response.ActionBlock, Targets: pfx("203.0.113.7"), Until: t0.Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	fw.failBlock = errors.New("netlink: EPERM")
	_, err := d.path.Enforce(ctx, response.Decision{Action: response.ActionBlock, Targets: pfx("203.0.113.7", "203.0.113.9"), Until: t0.Add(5 * time.Hour)})
	if api.CodeOf(err) != api.CodeFirewall {
		t.Fatalf("want %s, got %v", api.CodeFirewall, err)
	}
	d.Close()
	// The store must hold exactly what it held before: reopen and compare.
	fw.failBlock = nil
	d2 := newTestDaemon(t, cfg, fw, clk)
	got := blocksOf(t, d2)
	if len(got) != 1 || got[0].Target != "203.0.113.7" || !got[0].Until.Equal(t0.Add(time.Hour)) {
		t.Fatalf("after a failed block the store changed: %+v", got)
	}
}

func TestRestartRestoresRemainingTime(t *testing.T) {
	clk := &clock{t: t0}
	fw := newFakeFW()
	cfg := testConfig(t)
	d := newTestDaemon(t, cfg, fw, clk)
	ctx := context.Background()
	if _, err := d.path.Enforce(ctx, response.Decision{Action: response.ActionBlock, Targets: pfx("203.0.113.7"), Until: t0.Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	if _, err := d.path.Enforce(ctx, response.Decision{Action: response.ActionBlock, Targets: pfx("203.0.113.8")}); err != nil {
		t.Fatal(err)
	}
	d.Close()
	fw.drop()
	fw.elems[netip.MustParsePrefix("192.0.2.99/32")] = time.Minute // unknown to the store
	fw.present = true
	clk.Add(20 * time.Minute)
	newTestDaemon(t, cfg, fw, clk)
	want := "block 203.0.113.7/32 timeout=40m0s\nblock 203.0.113.8/32 timeout=0s"
	if diff := cmp.Diff(want, fw.state()); diff != "" {
		t.Fatalf("kernel after restart (-want +got):\n%s", diff)
	}
}

func TestSelfHeal(t *testing.T) {
	clk := &clock{t: t0}
	fw := newFakeFW()
	d := newTestDaemon(t, testConfig(t), fw, clk)
	if _, err := d.path.Enforce(context.Background(), response.Decision{Action: response.ActionBlock, Targets: pfx("203.0.113.7"), Until: t0.Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	fw.drop()
	d.heal.CheckTable()
	if fw.state() != "block 203.0.113.7/32 timeout=1h0m0s" || statusOf(t, d).TableHealth.Heals != 1 {
		t.Fatalf("after heal: %q %+v", fw.state(), statusOf(t, d).TableHealth)
	}
}

func TestStoreFailureUndoesKernel(t *testing.T) {
	clk := &clock{t: t0}
	fw := newFakeFW()
	d := newTestDaemon(t, testConfig(t), fw, clk)
	ctx := context.Background()
	if _, err := d.path.Enforce(ctx, response.Decision{Action: response.ActionBlock, Targets: pfx("203.0.113.7"), Until: t0.Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	before := fw.state()
	d.store.Close() // every commit now fails
	_, err := d.path.Enforce(ctx, response.Decision{Action: response.ActionBlock, Targets: pfx("203.0.113.7", "203.0.113.9"), Until: t0.Add(5 * time.Hour)})
	if api.CodeOf(err) != api.CodeStore {
		t.Fatalf("want %s, got %v", api.CodeStore, err)
	}
	if diff := cmp.Diff(before, fw.state()); diff != "" {
		t.Fatalf("kernel not restored after a store failure (-want +got):\n%s", diff)
	}
	if n := statusOf(t, d).ActiveBlocks; n != 1 {
		t.Fatalf("index changed: %d", n)
	}
}

// A reload whose allowlist covers active blocks says so (audit and log):
// the allowlist wins in the kernel while 'parry list' still shows them.
func TestReloadReportsBlocksInsideNewAllowlist(t *testing.T) {
	clk := &clock{t: time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)}
	cfg := testConfig(t)
	d := newTestDaemon(t, cfg, newFakeFW(), clk)
	if _, err := d.path.Enforce(context.Background(), response.Decision{Action: response.ActionBlock,
		Targets: pfx("203.0.113.7", "203.0.113.9", "2001:db8::/48"), Until: clk.Now().Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	next := cfg
	next.Allowlist = []string{"203.0.113.0/24"}
	if err := next.Validate(); err != nil {
		t.Fatal(err)
	}
	if err := d.ApplyConfig(next); err != nil {
		t.Fatal(err)
	}
	if err := d.audit.Sync(); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(cfg.StateDir, "audit.log"))
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	last := lines[len(lines)-1]
	if !strings.Contains(last, `"event":"config_reload"`) || !strings.Contains(last, `"allowlisted_blocks":2`) {
		t.Fatalf("reload audit line does not count the 2 blocks inside the new allowlist: %s", last)
	}
}
