package metrics

import (
	"context"
	"fmt"
	"net/http"
	"net/netip"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/parryhq/parry/response"
)

func scrape(t *testing.T, url string) map[string]*dto.MetricFamily {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("scrape status %d", resp.StatusCode)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("parse scrape: %v", err)
	}
	return fams
}

func value(t *testing.T, fams map[string]*dto.MetricFamily, name string, labels map[string]string) float64 {
	t.Helper()
	fam := fams[name]
	if fam == nil {
		t.Fatalf("no family %s", name)
	}
next:
	for _, m := range fam.Metric {
		for _, lp := range m.Label {
			if want, ok := labels[lp.GetName()]; ok && want != lp.GetValue() {
				continue next
			}
		}
		switch {
		case m.Counter != nil:
			return m.Counter.GetValue()
		case m.Gauge != nil:
			return m.Gauge.GetValue()
		case m.Histogram != nil:
			return float64(m.Histogram.GetSampleCount())
		}
	}
	t.Fatalf("%s%v not found", name, labels)
	return 0
}

func TestScrape(t *testing.T) {
	m := New()
	ln, err := Listen(Config{Listen: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- m.Serve(ctx, ln, "/metrics") }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()

	block := response.Decision{Action: response.ActionBlock, Source: "policy",
		Targets: []netip.Prefix{netip.MustParsePrefix("203.0.113.7/32")}}
	m.Decision(block, 3*time.Millisecond)
	m.Decision(block, 40*time.Millisecond)
	m.Decision(response.Decision{Action: response.ActionUnblock, Source: "cli"}, 0)
	m.DecisionRefused(response.Decision{Action: response.ActionBlock, Source: "fleet"})
	m.SetActiveBlocks(5, 2)
	m.Signal(response.Signal{Kind: "auth_failure", Sender: response.Sender{UID: 33, User: "www-data"}}, "accepted")
	m.Signal(response.Signal{Kind: "auth_failure", Sender: response.Sender{UID: 33, User: "www-data"}}, "accepted")
	m.Signal(response.Signal{Kind: "scan", Sender: response.Sender{UID: 1000, PID: 7}}, "refused")
	m.Finding("critical", 1)
	until := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	m.SetLockdown(true, until)
	m.NotifyResult("ops", "failed")
	m.NotifyResult("ops", "delivered")
	m.NotifyResult("ops", "dropped")
	m.EvidenceCaptured("lockdown")

	fams := scrape(t, "http://"+ln.Addr().String()+"/metrics")
	checks := []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"parry_blocks_active", map[string]string{"family": "ipv4"}, 5},
		{"parry_blocks_active", map[string]string{"family": "ipv6"}, 2},
		{"parry_decisions_total", map[string]string{"action": "block", "cause": "policy", "result": "applied"}, 2},
		{"parry_decisions_total", map[string]string{"action": "unblock", "cause": "cli", "result": "applied"}, 1},
		{"parry_decisions_total", map[string]string{"action": "block", "cause": "fleet", "result": "refused"}, 1},
		{"parry_signals_total", map[string]string{"kind": "auth_failure", "sender": "www-data", "result": "accepted"}, 2},
		{"parry_signals_total", map[string]string{"kind": "scan", "sender": "uid=1000", "result": "refused"}, 1},
		{"parry_block_apply_seconds", nil, 2},
		{"parry_integrity_findings_total", map[string]string{"severity": "critical"}, 1},
		{"parry_integrity_findings_open", nil, 1},
		{"parry_lockdown_active", nil, 1},
		{"parry_lockdown_until_timestamp_seconds", nil, float64(until.Unix())},
		{"parry_notify_failures_total", map[string]string{"webhook": "ops", "reason": "failed"}, 1},
		{"parry_notify_failures_total", map[string]string{"webhook": "ops", "reason": "dropped"}, 1},
		{"parry_evidence_captures_total", map[string]string{"trigger": "lockdown"}, 1},
	}
	for _, c := range checks {
		if got := value(t, fams, c.name, c.labels); got != c.want {
			t.Errorf("%s%v = %v, want %v", c.name, c.labels, got, c.want)
		}
	}
	// Histogram buckets: 3 ms lands at or below 5 ms, 40 ms only above 25 ms.
	h := fams["parry_block_apply_seconds"].Metric[0].Histogram
	for _, b := range h.Bucket {
		want := map[float64]uint64{0.005: 1, 0.025: 1, 0.05: 2}[b.GetUpperBound()]
		if want != 0 && b.GetCumulativeCount() != want {
			t.Errorf("bucket le=%v: %d, want %d", b.GetUpperBound(), b.GetCumulativeCount(), want)
		}
	}
	m.SetLockdown(false, time.Time{})
	if got := testutil.ToFloat64(m.lockdown); got != 0 {
		t.Errorf("lockdown after release = %v", got)
	}
}

func TestLabelCardinalityBounded(t *testing.T) {
	m := New()
	for i := range 200 {
		m.Signal(response.Signal{Kind: fmt.Sprintf("k%d", i), Sender: response.Sender{User: "app"}}, "accepted")
	}
	if n := testutil.CollectAndCount(m.signals); n != maxLabelValues+1 {
		t.Errorf("%d series, want %d (64 kinds + other)", n, maxLabelValues+1)
	}
	if got := testutil.ToFloat64(m.signals.WithLabelValues("other", "app", "accepted")); got != 200-maxLabelValues {
		t.Errorf("other = %v", got)
	}
}

func TestConfig(t *testing.T) {
	for _, c := range []Config{{Listen: ":9477"}, {Listen: "nope"}, {Path: "metrics"}} {
		if c.Validate() == nil {
			t.Errorf("%+v validated", c)
		}
	}
	d := Config{Enabled: true}.WithDefaults()
	if d.Listen != "127.0.0.1:9477" || d.Path != "/metrics" || d.Validate() != nil {
		t.Errorf("defaults %+v", d)
	}
	if (Config{}).Enabled {
		t.Error("metrics must be off by default")
	}
}

func TestSourceLine(t *testing.T) {
	m := New()
	at := time.Unix(1796119014, 500_000_000)
	m.SourceStarted("journal", at.Add(-time.Minute))
	m.SourceLine("journal", "sshd", "matched", at)
	m.SourceLine("journal", "sshd", "matched", at)
	m.SourceLine("journal", "", "missed", at)
	if got := testutil.ToFloat64(m.sourceLines.WithLabelValues("journal", "sshd", "matched")); got != 2 {
		t.Errorf("parry_source_lines_total{journal,sshd,matched} = %v, want 2", got)
	}
	if got := testutil.ToFloat64(m.sourceLines.WithLabelValues("journal", "", "missed")); got != 1 {
		t.Errorf("parry_source_lines_total{journal,,missed} = %v, want 1", got)
	}
	if got := testutil.ToFloat64(m.sourceLast.WithLabelValues("journal")); got != 1796119014.5 {
		t.Errorf("parry_source_last_line_timestamp_seconds = %v", got)
	}
}
