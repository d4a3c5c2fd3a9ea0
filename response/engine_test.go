package response

import (
	"errors"
	"fmt"
	"github.com/parryhq/parry/agent/api"
	"math/rand/v2"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

func TestThresholds(t *testing.T) {
	// Default auth-failure rule: 5 within 15m per ip → block 1h.
	tests := []struct {
		name    string
		gaps    []time.Duration // before each signal
		decided []bool          // whether each signal produced a block
	}{
		{"below", []time.Duration{0, time.Minute, time.Minute, time.Minute}, []bool{false, false, false, false}},
		{"at", []time.Duration{0, 0, 0, 0, 0}, []bool{false, false, false, false, true}},
		{"above restarts count", []time.Duration{0, 0, 0, 0, 0, 0, 0, 0, 0, 0},
			[]bool{false, false, false, false, true, false, false, false, false, true}},
		{"spread inside window", []time.Duration{0, 3 * time.Minute, 3 * time.Minute, 3 * time.Minute, 5*time.Minute + 59*time.Second},
			[]bool{false, false, false, false, true}},
		// the first signal is exactly 15m old at the fifth: out of the window
		{"window edge", []time.Duration{0, 3 * time.Minute, 3 * time.Minute, 3 * time.Minute, 6 * time.Minute, time.Second},
			[]bool{false, false, false, false, false, true}},
		// 7 signals in 26m, never 5 within 15m until the last
		{"sliding", []time.Duration{0, 10 * time.Minute, 10 * time.Minute, 0, 5 * time.Minute, 0, time.Minute},
			[]bool{false, false, false, false, false, false, true}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := &clock{t: t0}
			e := newEngine(t, Config{}, c)
			for i, gap := range tc.gaps {
				c.advance(gap)
				r := mustHandle(t, e, authFailure("203.0.113.7"))
				var blocked bool
				for _, d := range r.Decisions {
					blocked = blocked || d.Action == ActionBlock
				}
				if blocked != tc.decided[i] {
					t.Fatalf("signal %d at t0+%s: blocked=%v, want %v (result %+v)", i+1, c.t.Sub(t0), blocked, tc.decided[i], r)
				}
			}
		})
	}
}

func TestOutcomes(t *testing.T) {
	c := &clock{t: t0}
	e := newEngine(t, Config{}, c)
	r := mustHandle(t, e, Signal{Kind: "printer_on_fire"})
	if r.Outcome != OutcomeNoRule {
		t.Errorf("unknown kind: outcome %q, want %q", r.Outcome, OutcomeNoRule)
	}
	// auth_failure without ip or user: no rule can count it
	if r := mustHandle(t, e, Signal{Kind: "auth_failure"}); r.Outcome != OutcomeNoRule {
		t.Errorf("auth_failure without key: outcome %q, want %q", r.Outcome, OutcomeNoRule)
	}
	r = mustHandle(t, e, authFailure("203.0.113.7"))
	want := []Progress{
		{Rule: "auth-failure", Key: "ip 203.0.113.7", Count: 1, Threshold: 5, Window: 15 * time.Minute},
		{Rule: "auth-failure-user", Key: "user alice", Count: 1, Threshold: 20, Window: 15 * time.Minute},
	}
	if r.Outcome != OutcomeCounted || !cmp.Equal(r.Progress, want) {
		t.Errorf("first auth_failure: %+v, want counted %s", r, cmp.Diff(want, r.Progress))
	}
	if got := e.Stats(); got.Signals != 3 || got.NoRule != 2 || got.Keys != 2 {
		t.Errorf("stats %+v", got)
	}
}

func TestDecisionCause(t *testing.T) {
	c := &clock{t: t0}
	e := newEngine(t, Config{Limits: Limits{CauseSignals: 3}}, c)
	var r Result
	for i := range 5 {
		c.advance(time.Second)
		s := authFailure("203.0.113.7")
		s.Detail = fmt.Sprintf("try %d", i)
		r = mustHandle(t, e, s)
	}
	if len(r.Decisions) != 1 {
		t.Fatalf("decisions %+v", r.Decisions)
	}
	d := r.Decisions[0]
	if d.Rule != "auth-failure" || d.Sender != "uid=33(www-data)" || d.Source != "policy" {
		t.Errorf("decision %+v", d)
	}
	var details []string
	for _, s := range d.Cause {
		details = append(details, s.Detail)
		if s.Sender.UID != 33 || s.Sender.Groups != nil {
			t.Errorf("cause sender %+v: want uid 33 without groups", s.Sender)
		}
	}
	if want := []string{"try 2", "try 3", "try 4"}; !cmp.Equal(details, want) {
		t.Errorf("cause (bounded to the last 3): %s", cmp.Diff(want, details))
	}
	if d.Reason != "5 auth_failure signals for ip 203.0.113.7 within 15m0s: block 203.0.113.7 for 1h0m0s" {
		t.Errorf("reason %q", d.Reason)
	}
}

func TestEscalation(t *testing.T) {
	fire := func(e *Engine, c *clock, addr string) time.Duration {
		t.Helper()
		var r Result
		for range 5 {
			r = mustHandle(t, e, authFailure(addr))
		}
		if len(r.Decisions) != 1 || r.Decisions[0].Action != ActionBlock {
			t.Fatalf("no block: %+v", r)
		}
		return r.Decisions[0].Until.Sub(c.t)
	}
	t.Run("sequence and cap", func(t *testing.T) {
		c := &clock{t: t0}
		e := newEngine(t, Config{Escalation: Escalation{Factor: 3, Max: api.Duration(24 * time.Hour)}}, c)
		var got []time.Duration
		for range 6 {
			got = append(got, fire(e, c, "203.0.113.7"))
			c.advance(2 * time.Hour)
		}
		want := []time.Duration{time.Hour, 3 * time.Hour, 9 * time.Hour, 24 * time.Hour, 24 * time.Hour, 24 * time.Hour}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("block durations (-want +got):\n%s", diff)
		}
		if d := fire(e, c, "203.0.113.8"); d != time.Hour {
			t.Errorf("another address escalated: %s", d)
		}
	})
	t.Run("forgotten after remember", func(t *testing.T) {
		c := &clock{t: t0}
		e := newEngine(t, Config{Escalation: Escalation{Remember: api.Duration(48 * time.Hour)}}, c)
		fire(e, c, "203.0.113.7")
		c.advance(47 * time.Hour)
		if d := fire(e, c, "203.0.113.7"); d != 2*time.Hour {
			t.Errorf("within remember: %s, want 2h", d)
		}
		c.advance(48 * time.Hour)
		if d := fire(e, c, "203.0.113.7"); d != time.Hour {
			t.Errorf("after remember: %s, want 1h", d)
		}
	})
	t.Run("factor 1 disables", func(t *testing.T) {
		c := &clock{t: t0}
		e := newEngine(t, Config{Escalation: Escalation{Factor: 1}}, c)
		for range 3 {
			if d := fire(e, c, "2001:db8::7"); d != time.Hour {
				t.Errorf("factor 1: %s", d)
			}
		}
	})
	t.Run("base above max is kept", func(t *testing.T) {
		c := &clock{t: t0}
		no := false
		e := newEngine(t, Config{BuiltinRules: &no, Escalation: Escalation{Max: api.Duration(time.Hour)}, Rules: []Rule{
			{Name: "scan", Kind: "scan_detected", Action: ActionBlock, Duration: api.Duration(2 * time.Hour)}}}, c)
		for range 3 {
			r := mustHandle(t, e, Signal{Kind: "scan_detected", IP: ip("203.0.113.9")})
			if d := r.Decisions[0].Until.Sub(c.t); d != 2*time.Hour {
				t.Errorf("got %s, want the rule's 2h", d)
			}
		}
	})
	t.Run("huge factor does not overflow", func(t *testing.T) {
		if got := scale(time.Hour, 100, 1000, 7*24*time.Hour); got != 7*24*time.Hour {
			t.Errorf("scale: %s", got)
		}
	})
}

func TestSnapshotRestore(t *testing.T) {
	c := &clock{t: t0}
	e := newEngine(t, Config{}, c)
	for _, a := range []string{"203.0.113.7", "203.0.113.8", "203.0.113.7"} {
		for range 5 {
			mustHandle(t, e, authFailure(a))
		}
		c.advance(time.Minute)
	}
	snap := e.Snapshot()
	want := []Offender{
		{Addr: ip("203.0.113.8"), Count: 1, Last: t0.Add(time.Minute)},
		{Addr: ip("203.0.113.7"), Count: 2, Last: t0.Add(2 * time.Minute)},
	}
	if diff := cmp.Diff(want, snap, cmpopts.EquateComparable(netip.Addr{})); diff != "" {
		t.Fatalf("snapshot (-want +got):\n%s", diff)
	}
	// a new engine (restart) continues the escalation
	e2 := newEngine(t, Config{}, c)
	bad := []Offender{{Count: 3, Last: c.t}, {Addr: ip("203.0.113.9"), Count: 4, Last: t0.Add(-31 * 24 * time.Hour)}}
	if n := e2.Restore(append(snap, bad...)); n != 2 {
		t.Errorf("Restore took %d, want 2 (invalid and forgotten entries skipped)", n)
	}
	var r Result
	for range 5 {
		r = mustHandle(t, e2, authFailure("203.0.113.7"))
	}
	if d := r.Decisions[0].Until.Sub(c.t); d != 4*time.Hour {
		t.Errorf("third block after restart: %s, want 4h", d)
	}
}

func TestEviction(t *testing.T) {
	c := &clock{t: t0}
	e := newEngine(t, Config{Limits: Limits{MaxKeys: 1000, MaxOffenders: 100}}, c)
	// an attacker halfway to a block, then a flood of distinct addresses
	for range 4 {
		mustHandle(t, e, authFailure("203.0.113.7"))
	}
	base := netip.MustParseAddr("10.0.0.0").As4()
	for i := range 100_000 {
		a := base
		a[1], a[2], a[3] = byte(i>>16), byte(i>>8), byte(i)
		mustHandle(t, e, Signal{Kind: "auth_failure", IP: netip.AddrFrom4(a)})
	}
	st := e.Stats()
	if st.Keys > 1000 {
		t.Errorf("keys %d above max_keys 1000", st.Keys)
	}
	if st.EvictedKeys < 100_000-1000 {
		t.Errorf("evicted %d keys, want at least %d", st.EvictedKeys, 100_000-1000)
	}
	// the evicted attacker starts again from zero (the documented cost of a bound)
	if r := mustHandle(t, e, authFailure("203.0.113.7")); len(r.Decisions) != 0 {
		t.Errorf("evicted key kept its count: %+v", r.Decisions)
	}
	// offenders are bounded too
	for i := range 500 {
		for range 5 {
			mustHandle(t, e, Signal{Kind: "auth_failure", IP: netip.AddrFrom4([4]byte{192, 0, 2, byte(i)}).Next()})
		}
	}
	if st := e.Stats(); st.Offenders > 100 || st.EvictedOffenders == 0 {
		t.Errorf("offenders %d (evicted %d), want at most 100", st.Offenders, st.EvictedOffenders)
	}
}

func TestIdleStateIsPruned(t *testing.T) {
	c := &clock{t: t0}
	e := newEngine(t, Config{}, c)
	for i := range 100 {
		mustHandle(t, e, authFailure(fmt.Sprintf("203.0.113.%d", i)))
	}
	c.advance(time.Hour)
	for range 60 {
		mustHandle(t, e, Signal{Kind: "other"})
	}
	if k := e.Stats().Keys; k != 0 {
		t.Errorf("%d idle keys left after their window", k)
	}
}

func TestDryRunAndLog(t *testing.T) {
	no := false
	rules := []Rule{
		{Name: "try-block", Kind: "rate_exceeded", Action: ActionBlock, Duration: api.Duration(time.Hour)},
		{Name: "watch", Kind: "odd", Key: KeyNone, Action: ActionLog},
		{Name: "trial", Kind: "probe", Action: ActionBlock, Duration: api.Duration(time.Hour), DryRun: true},
	}
	for _, global := range []bool{false, true} {
		t.Run(fmt.Sprint("dry_run=", global), func(t *testing.T) {
			c := &clock{t: t0}
			e := newEngine(t, Config{DryRun: global, BuiltinRules: &no, Rules: rules}, c)
			var ds []Decision
			for k, a := range map[string]string{"rate_exceeded": "203.0.113.7", "odd": "203.0.113.7", "probe": "203.0.113.8"} {
				ds = append(ds, mustHandle(t, e, Signal{Kind: k, IP: ip(a), Sender: webapp}).Decisions...)
			}
			dry := ""
			if global {
				dry = " dry_run"
			}
			want := []string{
				"block 203.0.113.7/32 until=t0+1h0m0s" + dry + " rule=try-block sender=uid=33(www-data) cause=1",
				"block 203.0.113.8/32 until=t0+1h0m0s dry_run rule=trial sender=uid=33(www-data) cause=1",
				"log dry_run rule=watch sender=uid=33(www-data) cause=1",
			}
			if diff := cmp.Diff(want, render(ds)); diff != "" {
				t.Errorf("decisions (-want +got):\n%s", diff)
			}
			// dry runs never feed escalation
			_, remembered := e.Offender(ip("203.0.113.7"))
			if remembered != !global {
				t.Errorf("offender remembered=%v, want %v", remembered, !global)
			}
		})
	}
}

func TestProtectedAddresses(t *testing.T) {
	c := &clock{t: t0}
	e := newEngine(t, Config{}, c)
	for _, a := range []string{"127.0.0.1", "::1", "198.51.100.20", "::ffff:127.0.0.1"} {
		r := mustHandle(t, e, Signal{Kind: "scan_detected", IP: ip(a)})
		if len(r.Decisions) != 1 || r.Decisions[0].Action != ActionNotify || len(r.Decisions[0].Targets) != 0 {
			t.Errorf("%s: %+v, want a notify without targets", a, r.Decisions)
		}
	}
}

func TestSeverityAndLockdownRule(t *testing.T) {
	c := &clock{t: t0}
	rules := []Rule{{Name: "tamper", Kind: "integrity_violation", MinSeverity: "critical", Key: KeyNone,
		Action: ActionLockdown, Duration: api.Duration(15 * time.Minute), Allow: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/24")}, Isolate: true}}
	e := newEngine(t, Config{Rules: rules}, c)
	var ds []Decision
	for _, sev := range []string{"", "low", "high", "critical"} {
		ds = append(ds, mustHandle(t, e, Signal{Kind: "integrity_violation", Severity: sev, Path: "/etc/passwd"}).Decisions...)
	}
	want := []string{
		"lockdown until=t0+15m0s allow=[10.0.0.0/24] isolate rule=tamper sender=uid=0 cause=1",
		"notify rule=integrity-violation sender=uid=0 cause=1",
		"notify rule=integrity-violation sender=uid=0 cause=1",
		"notify rule=integrity-violation sender=uid=0 cause=1",
		"notify rule=integrity-violation sender=uid=0 cause=1",
	}
	if diff := cmp.Diff(want, render(ds)); diff != "" {
		t.Errorf("decisions (-want +got):\n%s", diff)
	}
}

func TestDefaultPolicyNeverLocksDown(t *testing.T) {
	for _, r := range DefaultRules() {
		if r.Action == ActionLockdown {
			t.Errorf("built-in rule %s locks down", r.Name)
		}
	}
}

func TestInvalidSignal(t *testing.T) {
	c := &clock{t: t0}
	e := newEngine(t, Config{}, c)
	long := string(make([]byte, MaxTextLen+1))
	for _, s := range []Signal{
		{}, {Kind: "auth failure"}, {Kind: "x", Severity: "apocalyptic"}, {Kind: "x", Detail: long},
		{Kind: "x", User: "\xff"}, {Kind: string(make([]byte, 65))},
	} {
		if _, err := e.Handle(s); !errors.Is(err, ErrInvalidSignal) {
			t.Errorf("Handle(%.40q): %v, want ErrInvalidSignal", s.Kind, err)
		}
	}
	if st := e.Stats(); st.Signals != 0 || st.Keys != 0 {
		t.Errorf("invalid signals changed state: %+v", st)
	}
}

func TestRateLimit(t *testing.T) {
	c := &clock{t: t0}
	e := newEngine(t, Config{Limits: Limits{SenderRate: 10, SenderBurst: 20}}, c)
	other := Sender{UID: 1000}
	admitted := 0
	for range 100 {
		if e.Admit(webapp) == nil {
			admitted++
		}
	}
	if admitted != 20 {
		t.Errorf("burst: admitted %d, want 20", admitted)
	}
	if err := e.Admit(other); err != nil {
		t.Errorf("another sender starved: %v", err)
	}
	if err := e.Admit(webapp); !errors.Is(err, ErrRateLimited) {
		t.Errorf("empty bucket: %v, want ErrRateLimited", err)
	}
	c.advance(500 * time.Millisecond) // 5 tokens
	admitted = 0
	for range 100 {
		if e.Admit(webapp) == nil {
			admitted++
		}
	}
	if admitted != 5 {
		t.Errorf("after 0.5s at 10/s: admitted %d, want 5", admitted)
	}
	if st := e.Stats(); st.RateLimited != 80+1+95 {
		t.Errorf("rate limited %d", st.RateLimited)
	}
}

// TestShuffledReplaysConverge replays the same signals in many orders
// within one window; the set of decisions is the same every time.
func TestShuffledReplaysConverge(t *testing.T) {
	var sigs []Signal
	for i, n := range []int{7, 5, 4, 12, 1} { // auth failures per address
		for range n {
			sigs = append(sigs, authFailure(fmt.Sprintf("203.0.113.%d", i+1)))
		}
	}
	for range 3 {
		sigs = append(sigs, Signal{Kind: "scan_detected", IP: ip("2001:db8::5"), Sender: webapp})
	}
	sigs = append(sigs, Signal{Kind: "printer_on_fire"}, Signal{Kind: "integrity_violation", Path: "/etc/shadow"})
	want := []string{
		"block 2001:db8::/64 until=t0+1h0m0s rule=scan-detected sender=uid=33(www-data) cause=1",
		"block 2001:db8::/64 until=t0+2h0m0s rule=scan-detected sender=uid=33(www-data) cause=1",
		"block 2001:db8::/64 until=t0+4h0m0s rule=scan-detected sender=uid=33(www-data) cause=1",
		"block 203.0.113.1/32 until=t0+1h0m0s rule=auth-failure sender=uid=33(www-data) cause=5",
		"block 203.0.113.2/32 until=t0+1h0m0s rule=auth-failure sender=uid=33(www-data) cause=5",
		"block 203.0.113.4/32 until=t0+1h0m0s rule=auth-failure sender=uid=33(www-data) cause=5",
		"block 203.0.113.4/32 until=t0+2h0m0s rule=auth-failure sender=uid=33(www-data) cause=5",
		"notify rule=auth-failure-user sender=uid=33(www-data) cause=10",
		"notify rule=integrity-violation sender=uid=0 cause=1",
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range 50 {
		c := &clock{t: t0}
		e := newEngine(t, Config{}, c)
		var ds []Decision
		for _, s := range sigs {
			ds = append(ds, mustHandle(t, e, s).Decisions...)
		}
		if diff := cmp.Diff(want, render(ds)); diff != "" {
			t.Fatalf("replay %d (-want +got):\n%s", i, diff)
		}
		rng.Shuffle(len(sigs), func(i, j int) { sigs[i], sigs[j] = sigs[j], sigs[i] })
	}
}

// TestConcurrentHandle: the engine is shared by every connection; run with
// -race. Four senders, each 5 signals for each of 200 addresses: every
// address is blocked exactly once.
func TestConcurrentHandle(t *testing.T) {
	c := &clock{t: t0}
	e := newEngine(t, Config{Limits: Limits{SenderRate: 1e6, SenderBurst: 1e6}}, c)
	var wg sync.WaitGroup
	blocks := make([]int, 4)
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 200 {
				for range 5 {
					if err := e.Admit(Sender{UID: uint32(g)}); err != nil {
						t.Error(err)
						return
					}
					r, err := e.Handle(Signal{Kind: "auth_failure", IP: netip.AddrFrom4([4]byte{10, byte(g), 0, byte(i)})})
					if err != nil {
						t.Error(err)
						return
					}
					blocks[g] += len(r.Decisions)
				}
			}
		}()
	}
	wg.Wait()
	for g, n := range blocks {
		if n != 200 {
			t.Errorf("sender %d: %d blocks, want 200", g, n)
		}
	}
	_ = e.Snapshot()
}
