package agent

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/parryhq/parry/agent/api"
	"github.com/parryhq/parry/agent/enforce"

	"github.com/parryhq/parry/agent/audit"
	"github.com/parryhq/parry/response"
)

// remoteBlocks is n separate one-target remote blocks, 203.0.113.0 up.
func remoteBlocks(n int, until time.Time) []response.Decision {
	decs := make([]response.Decision, n)
	for i := range decs {
		decs[i] = response.Decision{ID: fmt.Sprintf("r%d", i), Action: response.ActionBlock, Until: until,
			Targets: pfx(fmt.Sprintf("2001:db8:b::%x", i)), Source: "fleet", Origin: "b", Reason: "from b"}
	}
	return decs
}

// TestEnforceBatchGuardsEachDecision: a run of decisions goes to the
// kernel in one update; the guard refuses what the allowlist, loopback and
// the host's own address protect (audited with the origin, changing
// nothing) and the rest is applied; every decision is audited and observed.
func TestEnforceBatchGuardsEachDecision(t *testing.T) {
	clk := &clock{t: t0}
	fw := newFakeFW()
	cfg := testConfig(t)
	d := newTestDaemon(t, cfg, fw, clk)
	var seen []string
	d.path.Observe(func(dec response.Decision, out enforce.Outcome, _ enforce.State) {
		code := "ok"
		if out.Err != nil {
			code = api.CodeOf(out.Err)
		}
		seen = append(seen, dec.ID+" "+code)
	})
	until := t0.Add(time.Hour)
	decs := remoteBlocks(50, until)
	protected := []string{"198.51.100.10", "127.0.0.1", "192.0.2.1"} // allowlist, loopback, own
	for i, s := range protected {
		decs = append(decs, response.Decision{ID: fmt.Sprintf("p%d", i), Action: response.ActionBlock, Until: until,
			Targets: pfx(s), Source: "fleet", Origin: "b"})
	}
	// partial: one protected target does not keep the other out
	decs = append(decs, response.Decision{ID: "mixed", Action: response.ActionBlock, Until: until,
		Targets: pfx("127.0.0.5", "203.0.113.77"), Source: "fleet", Origin: "b"})
	calls := fw.blockCalls
	outs := d.path.EnforceBatch(context.Background(), decs, enforce.EnforceOptions{Partial: true})
	if n := fw.blockCalls - calls; n != 1 {
		t.Errorf("%d kernel updates for one run; want 1", n)
	}
	if len(outs) != len(decs) {
		t.Fatalf("%d outcomes for %d decisions", len(outs), len(decs))
	}
	for i, out := range outs {
		switch {
		case i < 50 && (out.Err != nil || out.Added != 1 || len(out.Applied) != 1):
			t.Errorf("decision %d: %+v; want applied", i, out)
		case i >= 50 && i < 53 && out.Err == nil:
			t.Errorf("protected %s was not refused: %+v", decs[i].Targets[0], out)
		}
	}
	if last := outs[len(outs)-1]; last.Err != nil || len(last.Refused) != 1 || fmt.Sprint(last.Applied) != "[203.0.113.77/32]" {
		t.Errorf("partial decision: %+v; want 203.0.113.77 applied, 1 refused", last)
	}
	if n := statusOf(t, d).ActiveBlocks; n != 51 {
		t.Errorf("%d active blocks; want 51", n)
	}
	for _, s := range protected {
		if _, in := fw.elems[netip.MustParsePrefix(s+"/32")]; in {
			t.Errorf("protected %s is in the kernel", s)
		}
	}
	if len(seen) != len(decs) || seen[0] != "r0 ok" || seen[50] != "p0 "+api.CodeAllowlisted {
		t.Errorf("observers heard %d decisions (first %q, protected %q); want %d", len(seen), seen[0], seen[50], len(decs))
	}
	if n := len(auditEvents(t, d, "block")); n != 51 {
		t.Errorf("%d block audit lines; want 51 (one per applied decision)", n)
	}
	refusals := auditEvents(t, d, "refuse")
	if len(refusals) != 3 || refusals[0]["origin"] != "b" || refusals[0]["source"] != "fleet" {
		t.Errorf("refusals audited: %v; want 3 with origin b", refusals)
	}
	if res, err := audit.VerifyFile(filepath.Join(cfg.StateDir, "audit.log")); err != nil || !res.OK {
		t.Errorf("audit chain: %+v %v", res, err)
	}
	// The store has every applied block: a restart finds them.
	d.Close()
	d2 := newTestDaemon(t, cfg, fw, clk)
	if n := len(blocksOf(t, d2)); n != 51 {
		t.Errorf("after restart %d blocks; want 51", n)
	}
}

// TestEnforceBatchSameAsOneByOne: a target repeated in a batch, mixed
// actions, a dry run, overlapping CIDRs (the kernel gets their union) and an expiry in the past give the
// same outcomes, store and kernel as enforcing the decisions one by one.
func TestEnforceBatchSameAsOneByOne(t *testing.T) {
	until := t0.Add(time.Hour)
	b := func(id string, u time.Time, targets ...string) response.Decision {
		return response.Decision{ID: id, Action: response.ActionBlock, Until: u, Targets: pfx(targets...), Origin: "b"}
	}
	ub := func(id string, targets ...string) response.Decision {
		return response.Decision{ID: id, Action: response.ActionUnblock, Targets: pfx(targets...), Origin: "b"}
	}
	decs := []response.Decision{
		b("1", until, "203.0.113.1", "203.0.113.2"),
		b("2", until.Add(time.Hour), "203.0.113.3"),
		b("3", until, "203.0.113.1"), // repeated: a new run
		ub("4", "203.0.113.2", "203.0.113.9"),
		ub("5", "203.0.113.3"),
		{ID: "6", Action: response.ActionBlock, Until: until, Targets: pfx("203.0.113.4"), DryRun: true},
		b("7", until, "10.0.0.0/16"),
		b("8", until.Add(time.Hour), "10.0.1.0/24"),    // inside 7, longer: its own record, the union splits 7
		b("9", until.Add(-2*time.Hour), "203.0.113.8"), // in the past
	}
	state := func(batch bool) (string, []string) {
		fw := newFakeFW()
		d := newTestDaemon(t, testConfig(t), fw, &clock{t: t0})
		var res []string
		if batch {
			for _, out := range d.path.EnforceBatch(context.Background(), decs, enforce.EnforceOptions{}) {
				res = append(res, fmt.Sprintf("%s +%d ~%d -%d %v", out.ID, out.Added, out.Updated, out.Removed, api.CodeOf(out.Err)))
			}
		} else {
			for _, dec := range decs {
				out, err := d.path.Enforce(context.Background(), dec)
				res = append(res, fmt.Sprintf("%s +%d ~%d -%d %v", out.ID, out.Added, out.Updated, out.Removed, api.CodeOf(err)))
			}
		}
		var blocks []string
		for _, bi := range blocksOf(t, d) {
			blocks = append(blocks, fmt.Sprintf("%s until %v", bi.Target, bi.Until))
		}
		return fw.state() + "\n" + fmt.Sprint(blocks), res
	}
	wantState, wantRes := state(false)
	gotState, gotRes := state(true)
	if diff := cmp.Diff(wantState, gotState); diff != "" {
		t.Errorf("batch state differs from one by one (-one +batch):\n%s", diff)
	}
	if diff := cmp.Diff(wantRes, gotRes); diff != "" {
		t.Errorf("batch outcomes differ from one by one (-one +batch):\n%s", diff)
	}
}

// TestEnforceBatchKernelFailureChangesNothing: when the kernel refuses the
// run, no decision of it is applied, the store is as before and each is
// refused in the audit log.
func TestEnforceBatchKernelFailureChangesNothing(t *testing.T) {
	clk := &clock{t: t0}
	fw := newFakeFW()
	cfg := testConfig(t)
	d := newTestDaemon(t, cfg, fw, clk)
	ctx := context.Background()
	first := remoteBlocks(1, t0.Add(time.Hour))
	if out := d.path.EnforceBatch(ctx, first, enforce.EnforceOptions{}); out[0].Err != nil {
		t.Fatal(out[0].Err)
	}
	before, blocksBefore := fw.state(), blocksOf(t, d)
	fw.failBlock = errors.New("netlink: EPERM")
	decs := remoteBlocks(20, t0.Add(5*time.Hour)) // r0 updates the existing block
	for i, out := range d.path.EnforceBatch(ctx, decs, enforce.EnforceOptions{Partial: true}) {
		if api.CodeOf(out.Err) != api.CodeFirewall || len(out.Applied) != 0 {
			t.Errorf("decision %d: %+v; want refused with %s", i, out, api.CodeFirewall)
		}
	}
	if diff := cmp.Diff(before, fw.state()); diff != "" {
		t.Errorf("kernel changed (-before +after):\n%s", diff)
	}
	if diff := cmp.Diff(blocksBefore, blocksOf(t, d)); diff != "" {
		t.Errorf("index changed (-before +after):\n%s", diff)
	}
	if n := len(auditEvents(t, d, "refuse")); n != 20 {
		t.Errorf("%d refusals audited; want 20", n)
	}
	d.Close()
	fw.failBlock = nil
	d2 := newTestDaemon(t, cfg, fw, clk)
	if diff := cmp.Diff(blocksBefore, blocksOf(t, d2)); diff != "" {
		t.Errorf("store changed by a failed batch (-before +after):\n%s", diff)
	}
	// The sequence numbers given back are reused without a clash.
	if out := d2.path.EnforceBatch(ctx, decs, enforce.EnforceOptions{}); out[19].Err != nil || len(blocksOf(t, d2)) != 20 {
		t.Errorf("after the failure, the batch applies: %v, %d blocks", out[19].Err, len(blocksOf(t, d2)))
	}
}

// TestEnforceBatchStoreFailureUndoesKernel: when the store commit fails,
// the kernel is put back as it was (new blocks removed, updated ones back
// to their old expiry), for blocks and for unblocks.
func TestEnforceBatchStoreFailureUndoesKernel(t *testing.T) {
	clk := &clock{t: t0}
	fw := newFakeFW()
	d := newTestDaemon(t, testConfig(t), fw, clk)
	ctx := context.Background()
	if out := d.path.EnforceBatch(ctx, remoteBlocks(3, t0.Add(time.Hour)), enforce.EnforceOptions{}); out[2].Err != nil {
		t.Fatal(out[2].Err)
	}
	before, blocksBefore := fw.state(), blocksOf(t, d)
	d.store.Close() // every commit now fails
	for i, out := range d.path.EnforceBatch(ctx, remoteBlocks(10, t0.Add(5*time.Hour)), enforce.EnforceOptions{}) {
		if api.CodeOf(out.Err) != api.CodeStore {
			t.Errorf("block %d: %v; want %s", i, out.Err, api.CodeStore)
		}
	}
	unblocks := []response.Decision{
		{ID: "u0", Action: response.ActionUnblock, Targets: pfx("2001:db8:b::0"), Origin: "b"},
		{ID: "u1", Action: response.ActionUnblock, Targets: pfx("2001:db8:b::1"), Origin: "b"},
	}
	for i, out := range d.path.EnforceBatch(ctx, unblocks, enforce.EnforceOptions{}) {
		if api.CodeOf(out.Err) != api.CodeStore {
			t.Errorf("unblock %d: %v; want %s", i, out.Err, api.CodeStore)
		}
	}
	if diff := cmp.Diff(before, fw.state()); diff != "" {
		t.Errorf("kernel not restored (-before +after):\n%s", diff)
	}
	if diff := cmp.Diff(blocksBefore, blocksOf(t, d)); diff != "" {
		t.Errorf("index changed (-before +after):\n%s", diff)
	}
}

// TestEnforceBatchUnblockKernelFailure: a run of unblocks the kernel
// refuses leaves the store with every block.
func TestEnforceBatchUnblockKernelFailure(t *testing.T) {
	clk := &clock{t: t0}
	fw := newFakeFW()
	cfg := testConfig(t)
	d := newTestDaemon(t, cfg, fw, clk)
	ctx := context.Background()
	d.path.EnforceBatch(ctx, remoteBlocks(4, t0.Add(time.Hour)), enforce.EnforceOptions{})
	blocksBefore := blocksOf(t, d)
	fw.failUnblock = errors.New("netlink: EPERM")
	var unblocks []response.Decision
	for i := range 4 {
		unblocks = append(unblocks, response.Decision{ID: fmt.Sprintf("u%d", i), Action: response.ActionUnblock,
			Targets: pfx(fmt.Sprintf("2001:db8:b::%x", i)), Origin: "b"})
	}
	for i, out := range d.path.EnforceBatch(ctx, unblocks, enforce.EnforceOptions{}) {
		if api.CodeOf(out.Err) != api.CodeFirewall || out.Removed != 0 {
			t.Errorf("unblock %d: %+v; want refused with %s", i, out, api.CodeFirewall)
		}
	}
	d.Close()
	fw.failUnblock = nil
	d2 := newTestDaemon(t, cfg, fw, clk)
	if diff := cmp.Diff(blocksBefore, blocksOf(t, d2)); diff != "" {
		t.Errorf("store changed by a failed unblock batch (-before +after):\n%s", diff)
	}
}

// TestApplyRemoteBatch: decisions without an origin and actions that do
// not travel are refused; the rest go through EnforceBatch in partial mode.
func TestApplyRemoteBatch(t *testing.T) {
	clk := &clock{t: t0}
	fw := newFakeFW()
	d := newTestDaemon(t, testConfig(t), fw, clk)
	until := t0.Add(time.Hour)
	decs := []response.Decision{
		{ID: "a", Action: response.ActionBlock, Until: until, Targets: pfx("203.0.113.1", "198.51.100.10"), Origin: "b"},
		{ID: "b", Action: response.ActionBlock, Until: until, Targets: pfx("203.0.113.2")}, // no origin
		{ID: "c", Action: response.ActionLockdown, Until: until, Origin: "b"},
		{ID: "d", Action: response.ActionUnblock, Targets: pfx("203.0.113.1"), Origin: "b"},
	}
	res := d.fleet.ApplyRemoteBatch(context.Background(), decs)
	got := make([]string, len(res))
	for i, r := range res {
		got[i] = fmt.Sprintf("refused=%d err=%v", r.Refused, r.Err != nil)
	}
	want := []string{"refused=1 err=false", "refused=0 err=true", "refused=0 err=true", "refused=0 err=false"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("results (-want +got):\n%s", diff)
	}
	l, err := d.path.CurrentLockdown(context.Background())
	if s := fw.state(); s != "" || l != nil || err != nil {
		t.Errorf("kernel holds %q, lockdown %v; want nothing (blocked, then unblocked; no lockdown)", s, l)
	}
}
