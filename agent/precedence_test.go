package agent

import (
	"context"
	"encoding/json"
	"net/netip"
	"testing"
	"time"

	"github.com/parryhq/parry/agent/api"
	"github.com/parryhq/parry/agent/enforce"
	"github.com/parryhq/parry/agent/store"
	"github.com/parryhq/parry/response"
)

// The precedence of decisions (docs/policy.md, "Who may shorten a block"):
// a decision other than an admin's explicit block or unblock may lengthen a
// block, never shorten or lift it; the stronger block keeps its expiry,
// reason and cause.

const precTarget = "203.0.113.7"

var precPrefix = netip.MustParsePrefix(precTarget + "/32")

// blockView is one target's block as the index, the store and the kernel
// hold it.
type blockView struct {
	Until   string // index: RFC 3339 or "permanent"; "" not blocked
	Reason  string
	Stored  string // store: same form
	Timeout string // kernel element timeout; "none" not in the kernel
}

func viewBlock(t *testing.T, d *Daemon, fw *fakeFW, p netip.Prefix) blockView {
	t.Helper()
	form := func(ms int64) string {
		if ms == 0 {
			return "permanent"
		}
		return time.UnixMilli(ms).UTC().Format(time.RFC3339)
	}
	var v blockView
	for _, b := range blocksOf(t, d) {
		if b.Target == api.FormatTarget(p) {
			v.Until, v.Reason = "permanent", b.Reason
			if !b.Until.IsZero() {
				v.Until = b.Until.Format(time.RFC3339)
			}
		}
	}
	if err := d.store.Load(func(b store.Block) {
		if b.Prefix == p {
			v.Stored = form(b.Until)
		}
	}, func(store.Decision) {}); err != nil {
		t.Fatal(err)
	}
	fw.mu.Lock()
	to, ok := fw.elems[p]
	fw.mu.Unlock()
	v.Timeout = "none"
	if ok {
		v.Timeout = to.Round(time.Second).String()
	}
	return v
}

// admin runs an op as root and fails the test if it is refused.
func admin(t *testing.T, d *Daemon, line string) {
	t.Helper()
	var a struct {
		OK    bool
		Error *api.Error
	}
	resp := d.server.HandleLine(context.Background(), rootPeer, []byte(line))
	if err := json.Unmarshal(resp, &a); err != nil || !a.OK {
		t.Fatalf("%s: %s", line, resp)
	}
}

// fiveAuthFailures sends five auth_failure signals for precTarget as the
// web app (allowed only that kind): the built-in rule blocks for 1h.
func fiveAuthFailures(t *testing.T, d *Daemon) signalAnswer {
	t.Helper()
	var a signalAnswer
	for range 5 {
		a = signal(t, d, webPeer, `{"op":"signal","kind":"auth_failure","ip":"`+precTarget+`"}`)
		if !a.OK {
			t.Fatalf("signal: %+v", a.Error)
		}
	}
	if a.Outcome != response.OutcomeDecided || len(a.Decisions) != 1 {
		t.Fatalf("fifth signal: %+v; want one block decision", a)
	}
	return a
}

func precDaemon(t *testing.T) (*Daemon, *fakeFW, *clock) {
	clk := &clock{t: time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)}
	cfg := testConfig(t)
	cfg.Response.Senders = []response.SenderRule{{User: "www-data", Kinds: []string{"auth_failure"}}}
	fw := newFakeFW()
	return newTestDaemon(t, cfg, fw, clk), fw, clk
}

func at(clk *clock, d time.Duration) string { return clk.Now().Add(d).UTC().Format(time.RFC3339) }

func wantView(t *testing.T, what string, got, want blockView) {
	t.Helper()
	if got != want {
		t.Errorf("%s:\n got %+v\nwant %+v", what, got, want)
	}
}

func TestPolicyBlockKeepsLongerAdminBlock(t *testing.T) {
	for _, tc := range []struct {
		name, op string
		want     func(clk *clock) blockView
	}{
		{"permanent", `"permanent":true`, func(*clock) blockView {
			return blockView{Until: "permanent", Reason: "admin ban", Stored: "permanent", Timeout: "0s"}
		}},
		{"one day", `"for":"1d"`, func(clk *clock) blockView {
			return blockView{Until: at(clk, 24*time.Hour), Reason: "admin ban", Stored: at(clk, 24*time.Hour), Timeout: "24h0m0s"}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d, fw, clk := precDaemon(t)
			admin(t, d, `{"op":"block","targets":["`+precTarget+`"],"reason":"admin ban",`+tc.op+`}`)
			want := tc.want(clk)
			a := fiveAuthFailures(t, d)
			if a.Decisions[0].Enforced == nil || len(a.Decisions[0].Enforced.Kept) != 1 || a.Decisions[0].Enforced.Updated != 0 {
				t.Errorf("policy decision: %+v; want ok with the target kept", a.Decisions[0])
			}
			wantView(t, "after the policy's 1h block", viewBlock(t, d, fw, precPrefix), want)
		})
	}
}

func TestPolicyBlockLengthens(t *testing.T) {
	d, fw, clk := precDaemon(t)
	admin(t, d, `{"op":"block","targets":["`+precTarget+`"],"reason":"admin ban","for":"10m"}`)
	a := fiveAuthFailures(t, d)
	if a.Decisions[0].Enforced == nil || a.Decisions[0].Enforced.Updated != 1 {
		t.Errorf("policy decision: %+v; want the target lengthened", a.Decisions[0])
	}
	// Longer, and still the admin's block (reason; only an admin lifts it).
	wantView(t, "admin 10m, then policy 1h", viewBlock(t, d, fw, precPrefix),
		blockView{Until: at(clk, time.Hour), Reason: "admin ban", Stored: at(clk, time.Hour), Timeout: "1h0m0s"})

	// A policy block lengthens a policy block too, and hands it over.
	clk.Add(30 * time.Minute)
	fiveAuthFailures(t, d) // repeat offence: 2h
	v := viewBlock(t, d, fw, precPrefix)
	if v.Until != at(clk, 2*time.Hour) || v.Timeout != "2h0m0s" {
		t.Errorf("second policy block: %+v; want 2h", v)
	}
}

func TestPolicyBlockNeverShortensPolicyBlock(t *testing.T) {
	clk := &clock{t: time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)}
	cfg := testConfig(t)
	cfg.Response.Senders = []response.SenderRule{{User: "www-data", Kinds: []string{"auth_failure", "rate_exceeded"}}}
	fw := newFakeFW()
	d := newTestDaemon(t, cfg, fw, clk)
	a := fiveAuthFailures(t, d) // 1h
	reason := a.Decisions[0].Reason
	for range 10 { // rate-exceeded: 10m
		signal(t, d, webPeer, `{"op":"signal","kind":"rate_exceeded","ip":"`+precTarget+`"}`)
	}
	wantView(t, "policy 1h, then policy 10m", viewBlock(t, d, fw, precPrefix),
		blockView{Until: at(clk, time.Hour), Reason: reason, Stored: at(clk, time.Hour), Timeout: "1h0m0s"})
}

func TestAdminBlockMayShorten(t *testing.T) {
	d, fw, clk := precDaemon(t)
	fiveAuthFailures(t, d)
	admin(t, d, `{"op":"block","targets":["`+precTarget+`"],"reason":"shorter","for":"10m"}`)
	wantView(t, "policy 1h, then admin 10m", viewBlock(t, d, fw, precPrefix),
		blockView{Until: at(clk, 10*time.Minute), Reason: "shorter", Stored: at(clk, 10*time.Minute), Timeout: "10m0s"})
	admin(t, d, `{"op":"block","targets":["`+precTarget+`"],"reason":"permanent","permanent":true}`)
	admin(t, d, `{"op":"block","targets":["`+precTarget+`"],"reason":"5m","for":"5m"}`)
	wantView(t, "admin permanent, then admin 5m", viewBlock(t, d, fw, precPrefix),
		blockView{Until: at(clk, 5*time.Minute), Reason: "5m", Stored: at(clk, 5*time.Minute), Timeout: "5m0s"})
}

// remoteDec is a fleet decision from host b.
func remoteDec(act response.Action, until time.Time) response.Decision {
	return response.Decision{ID: enforce.NewID(), Action: act, Targets: []netip.Prefix{precPrefix}, Until: until,
		Source: "fleet", Origin: "b", Reason: "from b"}
}

// fleetPaths are ApplyRemote and ApplyRemoteBatch, as one call each.
var fleetPaths = []struct {
	name  string
	apply func(d *Daemon, dec response.Decision) error
}{
	{"single", func(d *Daemon, dec response.Decision) error {
		_, err := d.fleet.ApplyRemote(context.Background(), dec)
		return err
	}},
	{"batch", func(d *Daemon, dec response.Decision) error {
		// A second, unrelated decision makes it a run of two.
		other := dec
		other.ID, other.Targets = enforce.NewID(), []netip.Prefix{netip.MustParsePrefix("203.0.113.99/32")}
		res := d.fleet.ApplyRemoteBatch(context.Background(), []response.Decision{dec, other})
		for _, r := range res {
			if r.Err != nil {
				return r.Err
			}
		}
		return nil
	}},
}

func TestFleetKeepsAdminBlock(t *testing.T) {
	for _, path := range fleetPaths {
		t.Run(path.name, func(t *testing.T) {
			d, fw, clk := precDaemon(t)
			admin(t, d, `{"op":"block","targets":["`+precTarget+`"],"reason":"admin ban","for":"1d"}`)
			day := blockView{Until: at(clk, 24*time.Hour), Reason: "admin ban", Stored: at(clk, 24*time.Hour), Timeout: "24h0m0s"}

			if err := path.apply(d, remoteDec(response.ActionBlock, clk.Now().Add(time.Hour))); err != nil {
				t.Fatal(err)
			}
			wantView(t, "admin 1d, then fleet 1h", viewBlock(t, d, fw, precPrefix), day)

			if err := path.apply(d, remoteDec(response.ActionUnblock, time.Time{})); err != nil {
				t.Fatal(err)
			}
			wantView(t, "admin 1d, then fleet unblock", viewBlock(t, d, fw, precPrefix), day)

			if err := path.apply(d, remoteDec(response.ActionBlock, clk.Now().Add(48*time.Hour))); err != nil {
				t.Fatal(err)
			}
			wantView(t, "admin 1d, then fleet 2d", viewBlock(t, d, fw, precPrefix),
				blockView{Until: at(clk, 48*time.Hour), Reason: "admin ban", Stored: at(clk, 48*time.Hour), Timeout: "48h0m0s"})

			if err := path.apply(d, remoteDec(response.ActionUnblock, time.Time{})); err != nil {
				t.Fatal(err)
			}
			if v := viewBlock(t, d, fw, precPrefix); v.Until == "" {
				t.Errorf("a fleet unblock lifted the admin's (lengthened) block: %+v", v)
			}

			admin(t, d, `{"op":"block","targets":["`+precTarget+`"],"reason":"admin again","permanent":true}`)
			if err := path.apply(d, remoteDec(response.ActionBlock, clk.Now().Add(time.Hour))); err != nil {
				t.Fatal(err)
			}
			wantView(t, "admin permanent, then fleet 1h", viewBlock(t, d, fw, precPrefix),
				blockView{Until: "permanent", Reason: "admin again", Stored: "permanent", Timeout: "0s"})

			admin(t, d, `{"op":"unblock","targets":["`+precTarget+`"]}`)
			if v := viewBlock(t, d, fw, precPrefix); v != (blockView{Timeout: "none"}) {
				t.Errorf("after the admin's unblock: %+v; want no block", v)
			}
		})
	}
}

func TestFleetUnblockLiftsFleetAndPolicyBlocks(t *testing.T) {
	for _, path := range fleetPaths {
		t.Run(path.name, func(t *testing.T) {
			d, fw, clk := precDaemon(t)
			fiveAuthFailures(t, d)
			if err := path.apply(d, remoteDec(response.ActionUnblock, time.Time{})); err != nil {
				t.Fatal(err)
			}
			if v := viewBlock(t, d, fw, precPrefix); v != (blockView{Timeout: "none"}) {
				t.Errorf("policy block after a fleet unblock: %+v; want none", v)
			}
			if err := path.apply(d, remoteDec(response.ActionBlock, clk.Now().Add(time.Hour))); err != nil {
				t.Fatal(err)
			}
			if err := path.apply(d, remoteDec(response.ActionBlock, clk.Now().Add(10*time.Minute))); err != nil {
				t.Fatal(err)
			}
			wantView(t, "fleet 1h, then fleet 10m", viewBlock(t, d, fw, precPrefix),
				blockView{Until: at(clk, time.Hour), Reason: "from b", Stored: at(clk, time.Hour), Timeout: "1h0m0s"})
			if err := path.apply(d, remoteDec(response.ActionUnblock, time.Time{})); err != nil {
				t.Fatal(err)
			}
			if v := viewBlock(t, d, fw, precPrefix); v != (blockView{Timeout: "none"}) {
				t.Errorf("fleet block after a fleet unblock: %+v; want none", v)
			}
		})
	}
}

// The integrity watcher's signals go through the policy too: a lockdown
// rule for integrity_violation must not shorten or loosen an admin's
// lockdown either (it was merged on the socket's signal path only).
func TestIntegrityLockdownMerges(t *testing.T) {
	clk := &clock{t: time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)}
	cfg := testConfig(t)
	cfg.Response.Rules = []response.Rule{{Name: "integrity-violation", Kind: "integrity_violation", Key: response.KeyNone,
		Action: response.ActionLockdown, Duration: api.Duration(10 * time.Minute)}}
	fw := newFakeFW()
	d := newTestDaemon(t, cfg, fw, clk)
	admin(t, d, `{"op":"lockdown","for":"2h","isolate":true,"allow":["10.0.0.0/24"]}`)
	clk.Add(time.Minute)
	d.policy.handleOwn(context.Background(), response.Signal{Kind: "integrity_violation", Path: "/etc/passwd", Severity: "high"})
	l := fw.lockdown
	if l == nil || l.Timeout != 119*time.Minute || !l.Isolate || len(l.Allow) != 1 {
		t.Errorf("after an integrity lockdown during an admin's: %+v, want the admin's 119m left, isolated, 10.0.0.0/24", l)
	}
	if st := statusOf(t, d).Lockdown; !st.Until.Equal(clk.Now().Add(119 * time.Minute)) {
		t.Errorf("lockdown until %s; want the admin's", st.Until)
	}
}

// Only an admin ends a lockdown.
func TestNonAdminReleaseRefused(t *testing.T) {
	d, fw, _ := precDaemon(t)
	admin(t, d, `{"op":"lockdown","for":"2h","force":true}`)
	if _, err := d.path.Enforce(context.Background(), response.Decision{Action: response.ActionRelease, Source: "policy"}); api.CodeOf(err) != api.CodeForbidden {
		t.Errorf("non-admin release: %v; want %s", err, api.CodeForbidden)
	}
	if fw.lockdown == nil {
		t.Error("a non-admin release ended the lockdown")
	}
}

// Who made a block survives a restart: the store keeps it.
func TestAdminBlockSurvivesRestartAsAdmins(t *testing.T) {
	clk := &clock{t: time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)}
	cfg := testConfig(t)
	fw := newFakeFW()
	d := newTestDaemon(t, cfg, fw, clk)
	admin(t, d, `{"op":"block","targets":["`+precTarget+`"],"reason":"admin ban","permanent":true}`)
	d.Close()
	d = newTestDaemon(t, cfg, fw, clk)
	if _, err := d.fleet.ApplyRemote(context.Background(), remoteDec(response.ActionUnblock, time.Time{})); err != nil {
		t.Fatal(err)
	}
	if _, err := d.fleet.ApplyRemote(context.Background(), remoteDec(response.ActionBlock, clk.Now().Add(time.Hour))); err != nil {
		t.Fatal(err)
	}
	wantView(t, "after a restart, a fleet unblock and a fleet 1h block", viewBlock(t, d, fw, precPrefix),
		blockView{Until: "permanent", Reason: "admin ban", Stored: "permanent", Timeout: "0s"})
}
