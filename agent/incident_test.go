package agent

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/parryhq/parry/agent/api"
	"github.com/parryhq/parry/agent/audit"
	webhook "github.com/parryhq/parry/agent/notify"
	"github.com/parryhq/parry/agent/report"
	"github.com/parryhq/parry/response"
	"github.com/parryhq/parry/test/netns"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// incidentDaemon is a daemon over the fake firewall (timed, as parryd runs
// it) with the incident tooling attached and running.
func incidentDaemon(t *testing.T, mutate func(*Config)) (*Daemon, *Incident) {
	t.Helper()
	cfg := testConfig(t)
	if mutate != nil {
		mutate(&cfg)
		if err := cfg.Validate(); err != nil {
			t.Fatal(err)
		}
	}
	clk := &clock{t: time.Now()}
	d, err := New(cfg, Options{Firewall: TimeApply(newFakeFW()), Now: clk.Now, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	if err := d.heal.Reconcile("start"); err != nil {
		t.Fatal(err)
	}
	in, err := AttachIncident(d, "")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { in.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done; d.Close() })
	return d, in
}

// auditEvents returns the fields of every audit line of this event.
func auditEvents(t *testing.T, d *Daemon, event string) []map[string]any {
	t.Helper()
	d.audit.Sync()
	b, err := os.ReadFile(filepath.Join(d.Config().StateDir, "audit.log"))
	if err != nil {
		t.Fatal(err)
	}
	var out []map[string]any
	for line := range strings.Lines(string(b)) {
		var l struct {
			Event  string         `json:"event"`
			Fields map[string]any `json:"fields"`
		}
		if json.Unmarshal([]byte(line), &l) == nil && l.Event == event {
			out = append(out, l.Fields)
		}
	}
	return out
}

func checkEvidenceFile(t *testing.T, d *Daemon, fields map[string]any) {
	t.Helper()
	path := filepath.Join(d.Config().StateDir, "evidence", fields["id"].(string)+".json")
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o400 {
		t.Fatalf("evidence %s: %v mode %v", path, err, fi.Mode())
	}
	data, _ := os.ReadFile(path)
	sum := sha256.Sum256(data)
	if fields["sha256"] != hex.EncodeToString(sum[:]) {
		t.Errorf("audit chain records %v, file hashes to %x", fields["sha256"], sum)
	}
}

func TestLockdownCapturesEvidenceAsync(t *testing.T) {
	d, in := incidentDaemon(t, nil)
	until := d.now().Add(time.Hour)
	if _, err := d.path.Enforce(context.Background(), response.Decision{Action: response.ActionBlock,
		Targets: pfx("203.0.113.9"), Until: until, Reason: "pre-existing"}); err != nil {
		t.Fatal(err)
	}
	if _, err := d.path.Enforce(context.Background(), response.Decision{Action: response.ActionLockdown, Until: until, Reason: "intrusion"}); err != nil {
		t.Fatal(err)
	}
	var ev []map[string]any
	netns.Eventually(t, 20*time.Second, "evidence event in the audit log", func() bool {
		ev = auditEvents(t, d, "evidence")
		return len(ev) == 1
	})
	if ev[0]["trigger"] != "lockdown" || !strings.Contains(ev[0]["reason"].(string), "intrusion") {
		t.Errorf("evidence fields %v", ev[0])
	}
	checkEvidenceFile(t, d, ev[0])
	snap, _, err := in.evidence.Show(ev[0]["id"].(string))
	if err != nil {
		t.Fatal(err)
	}
	if snap.Lockdown == nil || snap.Lockdown.Reason != "intrusion" || len(snap.Blocks) != 1 || snap.Blocks[0].Prefix.String() != "203.0.113.9/32" {
		t.Errorf("agent's view in the snapshot: lockdown %+v blocks %+v", snap.Lockdown, snap.Blocks)
	}
	if res, err := audit.VerifyFile(filepath.Join(d.Config().StateDir, "audit.log")); err != nil || !res.OK {
		t.Errorf("chain: %+v %v", res, err)
	}
}

func TestCriticalFindingCapturesEvidence(t *testing.T) {
	got := make(chan []byte, 4)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		got <- b
	}))
	defer srv.Close()
	d, in := incidentDaemon(t, func(c *Config) {
		c.Notify = webhook.Config{Webhooks: []webhook.Webhook{{URL: srv.URL}}, MinSeverity: "critical", Events: []string{"finding"}}
	})
	sig := response.Signal{Kind: "integrity_violation", Source: "integrity", Path: "/usr/bin/sudo", Severity: "critical",
		Detail: "mode 0755 → 4755 (gained setuid)", Attrs: map[string]string{"finding": "changed"}}
	d.observeFinding(sig)
	var ev []map[string]any
	netns.Eventually(t, 20*time.Second, "evidence for the critical finding", func() bool {
		ev = auditEvents(t, d, "evidence")
		return len(ev) == 1
	})
	if ev[0]["trigger"] != "integrity" {
		t.Errorf("trigger %v", ev[0]["trigger"])
	}
	checkEvidenceFile(t, d, ev[0])
	snap, _, err := in.evidence.Show(ev[0]["id"].(string))
	if err != nil || len(snap.Findings) != 1 || snap.Findings[0].Path != "/usr/bin/sudo" || snap.Findings[0].Kind != "changed" {
		t.Errorf("findings in snapshot: %+v %v", snap.Findings, err)
	}
	select {
	case b := <-got:
		if !strings.Contains(string(b), `"kind":"finding"`) || !strings.Contains(string(b), "/usr/bin/sudo") {
			t.Errorf("webhook body %s", b)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no webhook for the critical finding")
	}
	// A medium finding neither captures nor notifies (min_severity critical).
	sig.Severity = "medium"
	d.observeFinding(sig)
	barrier(t, in)
	if n := len(auditEvents(t, d, "evidence")); n != 1 {
		t.Errorf("%d evidence events, want 1", n)
	}
	if st := in.notifier.Stats()[0]; st.Delivered != 1 || st.Queued != 0 {
		t.Errorf("webhook stats %+v", st)
	}
}

// barrier waits until the incident worker has run every job queued before it.
func barrier(t *testing.T, in *Incident) {
	t.Helper()
	done := make(chan struct{})
	in.enqueue("barrier", func(context.Context) { close(done) })
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		t.Fatal("incident worker stuck")
	}
}

func TestMetricsFromDecisions(t *testing.T) {
	d, in := incidentDaemon(t, func(c *Config) { c.Metrics.Enabled = true; c.Metrics.Listen = "127.0.0.1:0" })
	ctx := context.Background()
	until := d.now().Add(time.Hour)
	d.path.Enforce(ctx, response.Decision{Action: response.ActionBlock, Source: "policy", Targets: pfx("203.0.113.1", "203.0.113.2", "2001:db8:9::/48"), Until: until})
	d.path.Enforce(ctx, response.Decision{Action: response.ActionBlock, Source: "cli", Targets: pfx("127.0.0.1"), Until: until}) // refused: counted as such
	d.path.Enforce(ctx, response.Decision{Action: response.ActionUnblock, Source: "cli", Targets: pfx("203.0.113.2")})
	d.path.Enforce(ctx, response.Decision{Action: response.ActionLockdown, Source: "cli", Until: until})
	reg := in.Metrics().Registry()
	want := `
# HELP parry_blocks_active Blocks currently in force, by address family (ipv4, ipv6).
# TYPE parry_blocks_active gauge
parry_blocks_active{family="ipv4"} 1
parry_blocks_active{family="ipv6"} 1
# HELP parry_decisions_total Decisions, by action, cause (the decision's source: cli, policy, integrity, fleet) and result (applied, refused).
# TYPE parry_decisions_total counter
parry_decisions_total{action="block",cause="cli",result="refused"} 1
parry_decisions_total{action="block",cause="policy",result="applied"} 1
parry_decisions_total{action="lockdown",cause="cli",result="applied"} 1
parry_decisions_total{action="unblock",cause="cli",result="applied"} 1
# HELP parry_lockdown_active 1 while the host is locked down.
# TYPE parry_lockdown_active gauge
parry_lockdown_active 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "parry_blocks_active", "parry_decisions_total", "parry_lockdown_active"); err != nil {
		t.Error(err)
	}
	if n := testutil.CollectAndCount(reg, "parry_block_apply_seconds"); n != 1 {
		t.Errorf("apply histogram series %d", n)
	}
	mfs, _ := reg.Gather()
	for _, mf := range mfs {
		if mf.GetName() == "parry_block_apply_seconds" && mf.Metric[0].Histogram.GetSampleCount() != 1 {
			t.Errorf("apply samples %d, want 1", mf.Metric[0].Histogram.GetSampleCount())
		}
	}
}

// Enforcement is unaffected while the webhook endpoint hangs.
func TestEnforcementUnaffectedByHungWebhook(t *testing.T) {
	release := make(chan struct{})
	entered := make(chan struct{}, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case entered <- struct{}{}:
		default:
		}
		<-release
	}))
	defer srv.Close()
	defer close(release)
	d, in := incidentDaemon(t, func(c *Config) {
		c.Notify = webhook.Config{Webhooks: []webhook.Webhook{{Name: "ops", URL: srv.URL}}, QueueSize: 8, Timeout: api.Duration(time.Hour)}
		f := false
		c.Evidence.BlockConnections = &f
	})
	ctx := context.Background()
	until := d.now().Add(time.Hour)
	done := make(chan error, 1)
	go func() {
		for i := range 200 {
			target := pfx(fmt.Sprintf("198.18.%d.%d", i/250, i%250+1))
			if _, err := d.path.Enforce(ctx, response.Decision{Action: response.ActionBlock, Targets: target, Until: until}); err != nil {
				done <- err
				return
			}
		}
		done <- nil
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("enforcement stalled behind a hung webhook")
	}
	select {
	case <-entered:
	case <-time.After(10 * time.Second):
		t.Fatal("webhook never called")
	}
	st := in.notifier.Stats()[0]
	if st.Dropped == 0 || st.Dropped+uint64(st.Queued) > 200 {
		t.Errorf("stats %+v: a hung endpoint must fill its queue and drop, never block", st)
	}
	if statusOf(t, d).ActiveBlocks != 200 {
		t.Errorf("active blocks %d, want 200", statusOf(t, d).ActiveBlocks)
	}
}

func TestIncidentOpsOverSocket(t *testing.T) {
	d, _ := incidentDaemon(t, nil)
	dial := serve(t, d)
	c := dial()
	r := bufio.NewReader(c)
	call := func(req string, out any) wireResp {
		t.Helper()
		if _, err := c.Write([]byte(req + "\n")); err != nil {
			t.Fatal(err)
		}
		line, err := r.ReadBytes('\n')
		if err != nil {
			t.Fatal(err)
		}
		var w wireResp
		json.Unmarshal(line, &w)
		if out != nil {
			if err := json.Unmarshal(line, out); err != nil {
				t.Fatal(err)
			}
		}
		return w
	}
	if w := call(`{"op":"evidence_capture"}`, nil); w.OK || w.Error.Code != api.CodeBadRequest {
		t.Errorf("capture without reason: %+v", w)
	}
	var capResp struct {
		Evidence struct {
			ID     string `json:"id"`
			SHA256 string `json:"sha256"`
		} `json:"evidence"`
	}
	if w := call(`{"op":"evidence_capture","reason":"handover"}`, &capResp); !w.OK || capResp.Evidence.ID == "" {
		t.Fatalf("capture: %+v", w)
	}
	var list struct {
		Count    int                `json:"count"`
		Evidence []api.EvidenceInfo `json:"evidence"`
	}
	call(`{"op":"evidence_list"}`, &list)
	if list.Count != 1 || !list.Evidence[0].Intact || list.Evidence[0].Recorded != capResp.Evidence.SHA256 {
		t.Errorf("list: %+v", list)
	}
	var show struct {
		Info     api.EvidenceInfo `json:"info"`
		Snapshot map[string]any   `json:"snapshot"`
	}
	call(`{"op":"evidence_show","evidence_id":"`+capResp.Evidence.ID+`"}`, &show)
	if !show.Info.Intact || show.Snapshot["reason"] != "handover" {
		t.Errorf("show: %+v", show.Info)
	}
	if w := call(`{"op":"evidence_show","evidence_id":"../../etc/shadow"}`, nil); w.OK || w.Error.Code != api.CodeBadRequest {
		t.Errorf("hostile id: %+v", w)
	}
	if w := call(`{"op":"evidence_show","evidence_id":"20260101T000000Z-00000000"}`, nil); w.OK || w.Error.Code != CodeNotFound {
		t.Errorf("missing id: %+v", w)
	}
	// Tamper with the file: list and show now say so.
	path := filepath.Join(d.Config().StateDir, "evidence", capResp.Evidence.ID+".json")
	os.Chmod(path, 0o600)
	f, _ := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	f.WriteString(" ")
	f.Close()
	call(`{"op":"evidence_list"}`, &list)
	if list.Evidence[0].Intact || list.Evidence[0].SHA256 == list.Evidence[0].Recorded {
		t.Errorf("tampered evidence reported intact: %+v", list.Evidence[0])
	}
	var rep struct {
		Report report.Report `json:"report"`
	}
	call(`{"op":"report","since":"1h"}`, &rep)
	if !rep.Report.Chain.OK || !rep.Report.Chain.Checked || rep.Report.Totals.Evidence != 1 {
		t.Errorf("report: chain %+v totals %+v", rep.Report.Chain, rep.Report.Totals)
	}
	if w := call(`{"op":"report","since":"yesterday"}`, nil); w.OK {
		t.Error("bad since accepted")
	}
	var chk struct {
		Check struct {
			Findings []map[string]any `json:"findings"`
		} `json:"check"`
	}
	if w := call(`{"op":"check"}`, &chk); !w.OK {
		t.Errorf("check: %+v", w)
	}
}

func TestSignalsCountedInMetrics(t *testing.T) {
	d, in := incidentDaemon(t, func(c *Config) { c.Metrics.Enabled = true; c.Metrics.Listen = "127.0.0.1:0" })
	dial := serve(t, d)
	c := dial()
	r := bufio.NewReader(c)
	for range 2 {
		c.Write([]byte(`{"op":"signal","kind":"auth_failure","ip":"203.0.113.5","source":"webapp"}` + "\n"))
		if w := readResp(t, r); !w.OK {
			t.Fatalf("signal: %+v", w.Error)
		}
	}
	c.Write([]byte(`{"op":"signal","kind":"weird_kind"}` + "\n"))
	readResp(t, r)
	mfs, err := in.Metrics().Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	total := 0.0
	kinds := map[string]bool{}
	for _, mf := range mfs {
		if mf.GetName() != "parry_signals_total" {
			continue
		}
		for _, m := range mf.Metric {
			total += m.GetCounter().GetValue()
			for _, lp := range m.Label {
				if lp.GetName() == "kind" {
					kinds[lp.GetValue()] = true
				}
				if lp.GetName() == "sender" && lp.GetValue() != "root" {
					t.Errorf("sender label %q, want root", lp.GetValue())
				}
			}
		}
	}
	if total != 3 || !kinds["auth_failure"] || !kinds["weird_kind"] {
		t.Errorf("signals counted %v, kinds %v", total, kinds)
	}
}

func TestIncidentConfigSections(t *testing.T) {
	good := `
evidence:
  timeout: 3s
  max_processes: 100
  on_lockdown: false
notify:
  min_severity: critical
  webhooks:
    - name: ops
      url: https://hooks.example.org/T/secret
      format: slack
metrics:
  enabled: true
  listen: 127.0.0.1:9100
check:
  cert_warn: 240h
  key_dirs: [/etc/ssl/private]
`
	path := filepath.Join(t.TempDir(), "parry.yaml")
	os.WriteFile(path, []byte(good), 0o600)
	cfg, err := LoadConfig(path, false)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Evidence.Timeout.D() != 3*time.Second || cfg.Evidence.AutoOnLockdown() || !cfg.Metrics.Enabled ||
		cfg.Notify.Webhooks[0].Format != "slack" || cfg.Check.CertWarn.D() != 240*time.Hour {
		t.Errorf("decoded %+v %+v %+v %+v", cfg.Evidence, cfg.Notify, cfg.Metrics, cfg.Check)
	}
	for _, bad := range []string{
		"evidence:\n  timout: 3s\n",                                     // unknown key
		"evidence:\n  timeout: 5\n",                                     // 5ns: no unit
		"notify:\n  webhooks:\n    - url: ftp://x/secret\n",             // scheme
		"metrics:\n  enabled: true\n  listen: ':9100'\n",                // no host
		"check:\n  key_dirs: [relative]\n",                              // not absolute
		"notify:\n  webhooks:\n    - url: https://x/\n      token: t\n", // unknown key in a webhook
	} {
		os.WriteFile(path, []byte(bad), 0o600)
		_, err := LoadConfig(path, false)
		if err == nil {
			t.Errorf("config accepted:\n%s", bad)
		} else if strings.Contains(err.Error(), "secret") {
			t.Errorf("error leaks the webhook URL: %v", err)
		}
	}
}
