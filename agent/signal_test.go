package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/parryhq/parry/agent/api"
	"github.com/parryhq/parry/agent/audit"
	"github.com/parryhq/parry/agent/control"
	"github.com/parryhq/parry/response"
)

var (
	rootPeer = control.Peer{UID: 0, User: "root", Groups: []string{"root"}, Admin: true}
	webPeer  = control.Peer{UID: 33, GID: 33, User: "www-data", Groups: []string{"www-data"}}
)

type signalAnswer struct {
	OK    bool `json:"ok"`
	Error *api.Error
	SignalResult
}

func signal(t testing.TB, d *Daemon, p control.Peer, line string) signalAnswer {
	t.Helper()
	var a signalAnswer
	resp := d.server.HandleLine(context.Background(), p, []byte(line))
	if err := json.Unmarshal(resp, &a); err != nil {
		t.Fatalf("%s: %v", resp, err)
	}
	return a
}

func TestOpSignal(t *testing.T) {
	clk := &clock{t: time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)}
	cfg := testConfig(t)
	cfg.Response.Senders = []response.SenderRule{{User: "www-data", Kinds: []string{"auth_failure"}}}
	fw := newFakeFW()
	d := newTestDaemon(t, cfg, fw, clk)
	line := `{"op":"signal","kind":"auth_failure","ip":"203.0.113.7","user":"alice","source":"webapp"}`
	for i := 1; i <= 4; i++ {
		a := signal(t, d, webPeer, line)
		if !a.OK || a.Outcome != response.OutcomeCounted || a.Progress[0].Count != i {
			t.Fatalf("signal %d: %+v", i, a)
		}
	}
	a := signal(t, d, webPeer, line)
	if !a.OK || a.Outcome != response.OutcomeDecided || len(a.Decisions) != 1 || a.Decisions[0].Enforced == nil {
		t.Fatalf("fifth: %+v", a)
	}
	if to, ok := fw.elems[netip.MustParsePrefix("203.0.113.7/32")]; !ok || to != time.Hour {
		t.Errorf("kernel: %v %v, want a 1h block", to, ok)
	}
	blocks := blocksOf(t, d)
	if len(blocks) != 1 || blocks[0].Rule != "auth-failure" || blocks[0].Source != "webapp" || blocks[0].Sender != "uid=33(www-data)" {
		t.Errorf("stored block: %+v", blocks)
	}

	// refusals change nothing
	for _, tc := range []struct {
		peer       control.Peer
		line, code string
	}{
		{webPeer, `{"op":"signal","kind":"scan_detected","ip":"203.0.113.8"}`, api.CodeForbidden},
		{webPeer, `{"op":"block","targets":["203.0.113.8"]}`, api.CodeForbidden},
		{webPeer, `{"op":"lockdown","for":"1m","force":true}`, api.CodeForbidden},
		{rootPeer, `{"op":"signal","kind":"auth_failure","ip":"203.0.113.300"}`, CodeInvalidSignal},
		{rootPeer, `{"op":"signal","kind":"auth failure"}`, CodeInvalidSignal},
		{rootPeer, `{"op":"signal","kind":"x","severity":"doom"}`, CodeInvalidSignal},
		{rootPeer, `{"op":"signal","kind":"x","colour":"red"}`, api.CodeBadRequest},
		{rootPeer, `{"op":"signal","kind":"x","attrs":{"a":1}}`, api.CodeBadRequest},
		{rootPeer, `{"op":"signal","kind":"x","user":5}`, api.CodeBadRequest},
		{rootPeer, `{"op":"signal","kind":"x","user":null}`, api.CodeBadRequest},
		{rootPeer, `{"op":"signal","kind":"a\u0020b"}`, CodeInvalidSignal}, // escapes are decoded before validation
	} {
		a := signal(t, d, tc.peer, tc.line)
		if a.OK || a.Error == nil || a.Error.Code != tc.code {
			t.Errorf("%s as %s: %+v, want %s", tc.line, tc.peer.User, a, tc.code)
		}
	}
	if len(fw.elems) != 1 || fw.lockdown != nil {
		t.Errorf("refusals changed the firewall: %v %v", fw.elems, fw.lockdown)
	}

	// loopback reports become a notify, never a block
	for range 5 {
		a = signal(t, d, rootPeer, `{"op":"signal","kind":"auth_failure","ip":"127.0.0.1"}`)
	}
	if len(a.Decisions) != 1 || a.Decisions[0].Action != response.ActionNotify {
		t.Errorf("loopback: %+v", a)
	}

	// the escalation memory survives a restart (the store), and every
	// signal is in the audit chain
	d.Close()
	raw, err := os.ReadFile(filepath.Join(cfg.StateDir, "audit.log"))
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(string(raw), `"ip":"203.0.113.7","user":"alice","source":"webapp","sender"`); n != 5 {
		t.Errorf("audit log has %d records of the 5 accepted signals for 203.0.113.7", n)
	}
	if res, err := audit.VerifyFile(filepath.Join(cfg.StateDir, "audit.log")); err != nil || !res.OK {
		t.Errorf("audit chain: %+v %v", res, err)
	}
	d2 := newTestDaemon(t, cfg, fw, clk)
	if o, ok := d2.policy.engine().Offender(netip.MustParseAddr("203.0.113.7")); !ok || o.Count != 1 {
		t.Errorf("offender after restart: %+v %v", o, ok)
	}
}

func TestOpSignalRateLimitAndDryRun(t *testing.T) {
	clk := &clock{t: time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)}
	cfg := testConfig(t)
	cfg.Response.DryRun = true
	cfg.Response.Limits = response.Limits{SenderRate: 1, SenderBurst: 3}
	fw := newFakeFW()
	d := newTestDaemon(t, cfg, fw, clk)
	line := `{"op":"signal","kind":"scan_detected","ip":"203.0.113.7"}`
	for i := range 3 {
		if a := signal(t, d, rootPeer, line); !a.OK || !a.Decisions[0].DryRun {
			t.Fatalf("signal %d: %+v", i, a)
		}
	}
	if len(fw.elems) != 0 {
		t.Errorf("dry run blocked: %v", fw.elems)
	}
	if a := signal(t, d, rootPeer, line); a.OK || a.Error.Code != api.CodeRateLimited {
		t.Errorf("fourth within the burst of 3: %+v", a)
	}
	clk.Add(time.Second)
	if a := signal(t, d, rootPeer, line); !a.OK {
		t.Errorf("after a second at 1/s: %+v", a)
	}
}

func TestOpLockdown(t *testing.T) {
	clk := &clock{t: time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)}
	cfg := testConfig(t)
	cfg.Allowlist = nil
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	fw := newFakeFW()
	d := newTestDaemon(t, cfg, fw, clk)
	call := func(line string) (map[string]any, string) {
		var m map[string]any
		json.Unmarshal(d.server.HandleLine(context.Background(), rootPeer, []byte(line)), &m)
		if e, ok := m["error"].(map[string]any); ok {
			return m, e["code"].(string)
		}
		return m, ""
	}
	for line, code := range map[string]string{
		`{"op":"lockdown"}`:                                   CodeNeedsForce,
		`{"op":"lockdown","for":"0s","force":true}`:           api.CodeInvalidDuration,
		`{"op":"lockdown","for":"8d","force":true}`:           api.CodeInvalidDuration,
		`{"op":"lockdown","extend":"5m"}`:                     CodeNoLockdown,
		`{"op":"lockdown","for":"5m","extend":"5m"}`:          api.CodeBadRequest,
		`{"op":"lockdown","for":"5m","allow":["10.0.0.300"]}`: api.CodeInvalidTarget,
		`{"op":"lockdown","for":"5m","allow":["10.0.0.0/0"]}`: api.CodeInvalidTarget,
		`{"op":"lockdown","for":"5m","allow":["::/0"]}`:       api.CodeInvalidTarget,
	} {
		if _, got := call(line); got != code {
			t.Errorf("%s: code %q, want %q", line, got, code)
		}
	}
	if fw.lockdown != nil {
		t.Fatal("refused lockdown reached the firewall")
	}
	if _, code := call(`{"op":"lockdown","allow":["10.0.0.0/24"]}`); code != "" {
		t.Fatalf("default lockdown: %s", code)
	}
	if fw.lockdown == nil || fw.lockdown.Timeout != DefaultLockdown {
		t.Fatalf("kernel lockdown %+v, want the default 15m", fw.lockdown)
	}
	clk.Add(5 * time.Minute)
	m, code := call(`{"op":"lockdown","extend":"30m","isolate":true}`)
	if code != "" {
		t.Fatalf("extend: %s", code)
	}
	ld := m["lockdown"].(map[string]any)
	if ld["until"] != "2026-11-26T12:45:00Z" || ld["isolate"] != true || fmt.Sprint(ld["allow"]) != "[10.0.0.0/24]" {
		t.Errorf("extended lockdown %v", ld)
	}
	if fw.lockdown.Timeout != 40*time.Minute || !fw.lockdown.Isolate {
		t.Errorf("kernel after extend: %+v, want 40m left, isolated", fw.lockdown)
	}
	if _, code := call(`{"op":"release"}`); code != "" || fw.lockdown != nil {
		t.Errorf("release: %s %+v", code, fw.lockdown)
	}
}

// BenchmarkOpSignal is the daemon's signal path without the socket: decode,
// authorise, rate-limit, policy, audit record (every signal counted, none
// decides).
func BenchmarkOpSignal(b *testing.B) {
	cfg := DefaultConfig()
	cfg.StateDir = b.TempDir()
	cfg.Socket = cfg.StateDir + "/s.sock"
	cfg.Control.Rate, cfg.Control.Burst = 1e9, 1e9
	cfg.Response.Limits = response.Limits{SenderRate: 1e8, SenderBurst: 1e8}
	if err := cfg.Validate(); err != nil {
		b.Fatal(err)
	}
	d, err := New(cfg, Options{Firewall: newFakeFW(), Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		HostAddrs: func() ([]netip.Addr, error) { return nil, nil }})
	if err != nil {
		b.Fatal(err)
	}
	defer d.Close()
	var before, after syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &before)
	i := 0
	for b.Loop() {
		line := fmt.Appendf(nil, `{"op":"signal","kind":"auth_failure","ip":"10.%d.%d.%d","source":"bench"}`, byte(i>>16), byte(i>>8), byte(i))
		if resp := d.server.HandleLine(context.Background(), rootPeer, line); !strings.HasPrefix(string(resp), `{"ok":true`) {
			b.Fatalf("%s", resp)
		}
		i++
	}
	syscall.Getrusage(syscall.RUSAGE_SELF, &after)
	cpu := time.Duration(after.Utime.Nano() + after.Stime.Nano() - before.Utime.Nano() - before.Stime.Nano())
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "signals/s")
	b.ReportMetric(float64(cpu.Microseconds())/float64(b.N), "cpu-µs/signal")
}

// A policy lockdown never shortens or loosens an active operator lockdown.
func TestPolicyLockdownMerges(t *testing.T) {
	clk := &clock{t: time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)}
	cfg := testConfig(t)
	cfg.Response.Rules = []response.Rule{{Name: "tamper", Kind: "tamper", Key: response.KeyNone,
		Action: response.ActionLockdown, Duration: api.Duration(10 * time.Minute), Allow: []netip.Prefix{netip.MustParsePrefix("10.9.0.0/16")}}}
	fw := newFakeFW()
	d := newTestDaemon(t, cfg, fw, clk)
	signal(t, d, rootPeer, `{"op":"signal","kind":"tamper"}`)
	if fw.lockdown == nil || fw.lockdown.Timeout != 10*time.Minute || len(fw.lockdown.Allow) != 1 {
		t.Fatalf("policy lockdown: %+v", fw.lockdown)
	}
	d.server.HandleLine(context.Background(), rootPeer, []byte(`{"op":"lockdown","for":"2h","isolate":true,"allow":["10.0.0.0/24"]}`))
	clk.Add(time.Minute)
	a := signal(t, d, rootPeer, `{"op":"signal","kind":"tamper"}`)
	if len(a.Decisions) != 1 || a.Decisions[0].Error != nil {
		t.Fatalf("second policy lockdown: %+v", a)
	}
	l := fw.lockdown
	if l.Timeout != 119*time.Minute || !l.Isolate || len(l.Allow) != 1 || l.Allow[0] != netip.MustParsePrefix("10.0.0.0/24") {
		t.Errorf("after a policy lockdown during an operator's: %+v, want the operator's 119m left, isolated, 10.0.0.0/24", l)
	}
}
