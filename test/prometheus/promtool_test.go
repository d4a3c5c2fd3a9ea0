// Package prometheus checks what parry ships for Prometheus and Grafana
// (packaging/prometheus/parry-rules.yml, packaging/grafana/
// parry-dashboard.json) with Debian's promtool and prometheus: the rules
// parse and their alerts fire when they should (promtool test rules), every
// dashboard query parses and names a metric parryd exports, and a real
// Prometheus server scrapes a real parryd and evaluates the rules.
package prometheus

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/parryhq/parry/agent/metrics"
)

var (
	rulesFile     = filepath.Join("..", "..", "packaging", "prometheus", "parry-rules.yml")
	dashboardFile = filepath.Join("..", "..", "packaging", "grafana", "parry-dashboard.json")
)

// tool finds a Debian prometheus binary: skipped with a reason outside CI,
// a failure in CI (env CI set), where test/ci/deps.sh installs it.
func tool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err == nil {
		return p
	}
	if os.Getenv("CI") != "" {
		t.Fatalf("%s not found; CI must install Debian's prometheus package (test/ci/deps.sh, .ci/run)", name)
	}
	t.Skipf("%s not found (apt-get install prometheus, or test/ci/deps.sh); skipping", name)
	return ""
}

func promtool(t *testing.T, dir string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, tool(t, "promtool"), args...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func TestRulesCheck(t *testing.T) {
	abs, err := filepath.Abs(rulesFile)
	if err != nil {
		t.Fatal(err)
	}
	out, err := promtool(t, ".", "check", "rules", abs)
	if err != nil {
		t.Fatalf("promtool check rules: %v\n%s", err, out)
	}
	if !strings.Contains(out, "SUCCESS: 10 rules found") {
		t.Errorf("promtool check rules:\n%s", out)
	}
}

// TestAlertRules runs testdata/parry-rules.test.yml (each alert firing when
// it should, silent when it should not, with its labels and annotations)
// against the shipped rules.
func TestAlertRules(t *testing.T) {
	dir := t.TempDir()
	for src, dst := range map[string]string{rulesFile: "parry-rules.yml", filepath.Join("testdata", "parry-rules.test.yml"): "parry-rules.test.yml"} {
		b, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, dst), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	out, err := promtool(t, dir, "test", "rules", "parry-rules.test.yml")
	if err != nil || !strings.Contains(out, "SUCCESS") {
		t.Fatalf("promtool test rules: %v\n%s", err, out)
	}
}

// exported is every series name parryd's registry exports (histograms
// with their _bucket, _sum and _count).
func exported(t *testing.T) map[string]bool {
	t.Helper()
	m := metrics.New()
	m.AuditChain(func() bool { return true }) // registered by the daemon with its state
	fams, err := m.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{}
	for _, f := range fams {
		n := f.GetName()
		names[n] = true
		for _, s := range []string{"_bucket", "_sum", "_count"} {
			names[n+s] = true
		}
	}
	// Labelled counters appear in Gather only once used.
	for _, n := range []string{"parry_decisions_total", "parry_signals_total", "parry_integrity_findings_total",
		"parry_notify_failures_total", "parry_evidence_captures_total", "parry_source_lines_total", "parry_source_last_line_timestamp_seconds"} {
		names[n] = true
	}
	return names
}

var metricName = regexp.MustCompile(`\b(parry_[a-z_]+|process_[a-z_]+)\b`)

// TestDashboardQueries: every query of the dashboard (panels, template
// variables, annotations) parses as PromQL (promtool checks it as a
// recording rule) and names only metrics parryd exports; so do the
// alert rules. A renamed metric fails here.
func TestDashboardQueries(t *testing.T) {
	b, err := os.ReadFile(dashboardFile)
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Title  string `json:"title"`
		UID    string `json:"uid"`
		Panels []struct {
			ID      int    `json:"id"`
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
		Templating struct {
			List []struct {
				Definition string `json:"definition"`
			} `json:"list"`
		} `json:"templating"`
		Annotations struct {
			List []struct {
				Expr string `json:"expr"`
			} `json:"list"`
		} `json:"annotations"`
	}
	if err := json.Unmarshal(b, &dash); err != nil {
		t.Fatalf("dashboard JSON: %v", err)
	}
	if dash.UID == "" || len(dash.Panels) < 10 {
		t.Fatalf("dashboard %q (uid %q) has %d panels", dash.Title, dash.UID, len(dash.Panels))
	}
	var exprs []string
	ids := map[int]bool{}
	for _, p := range dash.Panels {
		if ids[p.ID] {
			t.Errorf("panel id %d used twice", p.ID)
		}
		ids[p.ID] = true
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, tg := range p.Targets {
			exprs = append(exprs, tg.Expr)
		}
	}
	for _, v := range dash.Templating.List {
		// label_values(EXPR, label) is Grafana's; EXPR is PromQL.
		inner := strings.TrimSuffix(strings.TrimPrefix(v.Definition, "label_values("), ")")
		if i := strings.LastIndex(inner, ","); i > 0 {
			inner = inner[:i]
		}
		exprs = append(exprs, inner)
	}
	for _, a := range dash.Annotations.List {
		exprs = append(exprs, a.Expr)
	}
	have := exported(t)
	var rules strings.Builder
	rules.WriteString("groups:\n  - name: dashboard\n    rules:\n")
	for i, e := range exprs {
		for _, n := range metricName.FindAllString(e, -1) {
			if !have[n] {
				t.Errorf("dashboard query %q names %s, which parryd does not export", e, n)
			}
		}
		q := strings.NewReplacer("$__rate_interval", "5m", "$instance", ".*", "$job", ".*").Replace(e)
		fmt.Fprintf(&rules, "      - record: dashboard:q%d\n        expr: %s\n", i, fmt.Sprintf("%q", q))
	}
	// The shipped alert rules (their live lines, not the commented placeholders).
	rb, err := os.ReadFile(rulesFile)
	if err != nil {
		t.Fatal(err)
	}
	for l := range strings.Lines(string(rb)) {
		if strings.HasPrefix(strings.TrimSpace(l), "expr:") {
			for _, n := range metricName.FindAllString(l, -1) {
				if !have[n] {
					t.Errorf("alert rule %q names %s, which parryd does not export", strings.TrimSpace(l), n)
				}
			}
		}
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "dashboard-queries.yml")
	if err := os.WriteFile(path, []byte(rules.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := promtool(t, dir, "check", "rules", path)
	if err != nil {
		t.Fatalf("a dashboard query does not parse: %v\n%s\n%s", err, out, rules.String())
	}
	if want := fmt.Sprintf("SUCCESS: %d rules found", len(exprs)); !strings.Contains(out, want) {
		t.Errorf("promtool: %s (want %s)", out, want)
	}
	if slices.Contains(exprs, "") {
		t.Error("an empty query")
	}
}
