package e2e

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/parryhq/parry/agent/evidence"
	"github.com/parryhq/parry/agent/hostcheck"
	"github.com/parryhq/parry/test/netns"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// TestEvidenceReportCheckMetrics: parryd in a test namespace captures
// evidence of a real process and a real TCP connection (file 0400, hash in
// the audit chain), records the blocked peer's connection after the block,
// captures on lockdown, reports, checks the host, and serves metrics.
func TestEvidenceReportCheckMetrics(t *testing.T) {
	p := netns.NewPair(t)
	p.HoldConnection(t, 8080)
	cfg := filepath.Join(t.TempDir(), "parry.yaml")
	if err := os.WriteFile(cfg, []byte("metrics:\n  enabled: true\n  listen: 127.0.0.1:9477\nevidence:\n  timeout: 10s\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	d := newDaemon(t, p.Host, "--config", cfg)
	d.Start()

	// Manual capture.
	var rec evidence.Record
	if err := json.Unmarshal([]byte(d.MustParry("evidence", "capture", "--reason", "e2e handover", "--json")), &rec); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(rec.Path)
	if err != nil || fi.Mode().Perm() != 0o400 || filepath.Dir(rec.Path) != filepath.Join(d.StateDir, "evidence") {
		t.Fatalf("evidence file %s: %v %v", rec.Path, err, fi.Mode())
	}
	data, _ := os.ReadFile(rec.Path)
	sum := sha256.Sum256(data)
	ev := d.AuditEvents("evidence")
	if len(ev) != 1 || ev[0]["id"] != rec.ID || ev[0]["sha256"] != hex.EncodeToString(sum[:]) {
		t.Fatalf("audit chain evidence %v, file sha256 %x", ev, sum)
	}
	var snap evidence.Snapshot
	json.Unmarshal(data, &snap)
	ci := slices.IndexFunc(snap.Connections, func(c evidence.Connection) bool {
		return c.Remote.Addr() == p.PeerV4 && c.Local.Port() == 8080 && c.State == "ESTABLISHED"
	})
	if ci < 0 || snap.Connections[ci].Name != "socat" || snap.Connections[ci].PID == 0 {
		t.Fatalf("peer connection with its process not in the snapshot: %+v", snap.Connections)
	}
	if !slices.ContainsFunc(snap.Processes, func(pr evidence.Process) bool { return pr.PID == snap.Connections[ci].PID && pr.Exe != "" }) {
		t.Errorf("owning process %d not among the processes", snap.Connections[ci].PID)
	}
	out := d.MustParry("evidence", "list")
	if !strings.Contains(out, rec.ID) || !strings.Contains(out, "intact") {
		t.Errorf("evidence list: %q", out)
	}
	if out := d.MustParry("evidence", "show", rec.ID); !strings.Contains(out, "intact") || !strings.Contains(out, "socat") {
		t.Errorf("evidence show: %q", out)
	}
	if _, _, code := d.Parry("evidence", "show", "../../etc/shadow"); code != 1 {
		t.Errorf("hostile id: exit %d, want 1", code)
	}
	if _, _, code := d.Parry("evidence", "capture"); code != 2 {
		t.Errorf("capture without --reason: exit %d, want 2", code)
	}

	// Block the peer: the block goes in, then its connections are recorded.
	d.MustParry("block", p.PeerV4.String(), "--for", "1h", "--reason", "e2e")
	var bc []map[string]any
	netns.Eventually(t, 15*time.Second, "block_connections in the audit log", func() bool {
		bc = d.AuditEvents("block_connections")
		return len(bc) == 1
	})
	conns, _ := json.Marshal(bc[0]["connections"])
	if !strings.Contains(string(conns), `"local":"192.0.2.1:8080"`) || !strings.Contains(string(conns), `"name":"socat"`) {
		t.Errorf("recorded connections: %s", conns)
	}

	// Lockdown captures evidence on its own.
	d.MustParry("lockdown", "--for", "10m", "--reason", "e2e lockdown", "--force")
	netns.Eventually(t, 20*time.Second, "evidence captured for the lockdown", func() bool {
		return len(d.AuditEvents("evidence")) == 2
	})
	if ev := d.AuditEvents("evidence"); ev[1]["trigger"] != "lockdown" {
		t.Errorf("second evidence trigger %v", ev[1]["trigger"])
	}
	d.MustParry("release")

	// Metrics, scraped inside the namespace (loopback there).
	metrics := scrapeInNS(t, p.Host, "127.0.0.1:9477", "/metrics")
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(strings.NewReader(metrics))
	if err != nil {
		t.Fatalf("parse metrics: %v", err)
	}
	gauge := func(name, family string) float64 {
		for _, m := range fams[name].GetMetric() {
			if family == "" || (len(m.Label) > 0 && m.Label[0].GetValue() == family) {
				return m.GetGauge().GetValue() + m.GetCounter().GetValue()
			}
		}
		t.Fatalf("metric %s %s missing", name, family)
		return 0
	}
	if gauge("parry_blocks_active", "ipv4") != 1 || gauge("parry_lockdown_active", "") != 0 || gauge("parry_evidence_captures_total", "cli") != 1 {
		t.Errorf("metrics: blocks %v lockdown %v evidence %v", gauge("parry_blocks_active", "ipv4"), gauge("parry_lockdown_active", ""), gauge("parry_evidence_captures_total", "cli"))
	}
	if fams["parry_block_apply_seconds"].GetMetric()[0].GetHistogram().GetSampleCount() != 1 {
		t.Errorf("apply latency samples: %v", fams["parry_block_apply_seconds"])
	}

	// Report.
	md := d.MustParry("report", "--since", "1h", "--format", "markdown")
	for _, want := range []string{"**Audit chain:** OK", "| 192.0.2.2 |", "lockdown", "| Evidence snapshots | 2 |", "(1 connections at block time)", rec.ID} {
		if !strings.Contains(md, want) {
			t.Errorf("markdown report lacks %q:\n%s", want, md)
		}
	}
	// The HTML page from the real daemon's report: the charts over time
	// (the daemon sends the series) and the verified chain.
	page := d.MustParry("report", "--since", "1h", "--format", "html")
	if n := strings.Count(page, `<svg xmlns="http://www.w3.org/2000/svg" class="chart time"`); n != 3 || !strings.Contains(page, `class="verdict ok"`) || !strings.Contains(page, "192.0.2.2") {
		t.Errorf("html report: %d time charts (want 3), verdict ok %v", n, strings.Contains(page, `class="verdict ok"`))
	}
	if _, _, code := d.Parry("report", "--format", "pdf"); code != 2 {
		t.Errorf("bad format: exit %d, want 2", code)
	}

	// Host check: the table is present, the world-readable state directory
	// is found, and the exit code follows the worst finding.
	if err := os.Chmod(d.StateDir, 0o755); err != nil {
		t.Fatal(err)
	}
	stdout, _, code := d.Parry("check", "--json")
	var rep hostcheck.Report
	if err := json.Unmarshal([]byte(stdout), &rep); err != nil {
		t.Fatalf("check --json: %v: %q", err, stdout)
	}
	if code != hostcheck.ExitCode(rep.Worst, len(rep.Findings) > 0) {
		t.Errorf("check exit %d for worst %v", code, rep.Worst)
	}
	stateOpen := false
	for _, f := range rep.Findings {
		if f.ID == "parry-table-missing" || f.ID == "parry-table-unknown" {
			t.Errorf("unexpected finding %+v", f)
		}
		stateOpen = stateOpen || (f.ID == "parry-state-open" && f.Path == d.StateDir)
	}
	if !stateOpen || code < hostcheck.ExitHigh {
		t.Errorf("state dir 0755 not reported as high (exit %d): %+v", code, rep.Findings)
	}
	if out := d.MustParry("audit", "verify"); !strings.Contains(out, "audit log ok") {
		t.Errorf("audit verify: %q", out)
	}
}

// scrapeInNS fetches an HTTP page from inside ns with socat (HTTP/1.0, so the
// server closes after the body) and returns the body.
func scrapeInNS(t *testing.T, ns *netns.NS, addr, path string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cmd := ns.Command(ctx, "socat", "-t", "5", "-", "TCP:"+addr+",shut-none") // no half-close: net/http would cancel the request
	cmd.Stdin = strings.NewReader("GET " + path + " HTTP/1.0\r\nHost: localhost\r\n\r\n")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("scrape %s%s: %v", addr, path, err)
	}
	head, body, ok := strings.Cut(string(out), "\r\n\r\n")
	if !ok || !strings.HasPrefix(head, "HTTP/1.0 200") && !strings.HasPrefix(head, "HTTP/1.1 200") {
		t.Fatalf("scrape %s%s: %q", addr, path, head)
	}
	return body
}

// TestCriticalIntegrityFindingCapturesEvidence: a watched file gains setuid
// (a critical finding); parryd captures evidence on its own, with the
// finding among the open findings, and the hash in the audit chain.
func TestCriticalIntegrityFindingCapturesEvidence(t *testing.T) {
	ns := netns.New(t)
	watched := t.TempDir()
	target := filepath.Join(watched, "tool")
	if err := os.WriteFile(target, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(t.TempDir(), "parry.yaml")
	if err := os.WriteFile(cfg, []byte("integrity:\n  paths:\n    - path: "+watched+"\n  package_manager: none\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	d := newDaemon(t, ns, "--config", cfg)
	d.Start()
	netns.Eventually(t, 10*time.Second, "integrity baseline and watcher", func() bool {
		st := integrityOf(t, d)
		return st.Running && st.BaselineEntries >= 2
	})
	if err := os.Chmod(target, 0o755|os.ModeSetuid); err != nil {
		t.Fatal(err)
	}
	var ev []map[string]any
	netns.Eventually(t, 20*time.Second, "evidence captured for the critical finding", func() bool {
		ev = d.AuditEvents("evidence")
		return len(ev) == 1
	})
	if ev[0]["trigger"] != "integrity" || !strings.Contains(ev[0]["reason"].(string), target) {
		t.Errorf("evidence %v", ev[0])
	}
	var show struct {
		Info struct {
			Intact bool   `json:"intact"`
			Mode   string `json:"mode"`
		} `json:"info"`
		Snapshot evidence.Snapshot `json:"snapshot"`
	}
	if err := json.Unmarshal([]byte(d.MustParry("evidence", "show", ev[0]["id"].(string), "--json")), &show); err != nil {
		t.Fatal(err)
	}
	if !show.Info.Intact || show.Info.Mode != "0400" {
		t.Errorf("evidence info %+v", show.Info)
	}
	if !slices.ContainsFunc(show.Snapshot.Findings, func(f evidence.Finding) bool { return f.Path == target && f.Severity == "critical" }) {
		t.Errorf("finding not in the snapshot: %+v", show.Snapshot.Findings)
	}
	if md := d.MustParry("report", "--format", "markdown"); !strings.Contains(md, "| critical | `"+target+"`") || !strings.Contains(md, "| integrity |") {
		t.Errorf("report lacks the finding or its evidence:\n%s", md)
	}
}
