package prometheus

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/parryhq/parry/test/daemon"
	"github.com/parryhq/parry/test/netns"
	"github.com/parryhq/parry/test/parrybin"
)

func TestMain(m *testing.M) {
	code := m.Run()
	parrybin.Remove()
	os.Exit(code)
}

// TestPrometheusScrapesParryd: a real parryd (test/daemon) in a test
// namespace with metrics on the namespace's loopback, and Debian's
// prometheus in the same namespace (ip netns exec) scraping it every second
// with the shipped rules loaded. After a block, a signal and a lockdown,
// Prometheus' HTTP API (queried inside the namespace) has the series with
// the values parryd holds, and the rules' ParryLockdownActive alert fires.
func TestPrometheusScrapesParryd(t *testing.T) {
	prom := tool(t, "prometheus")
	ns := netns.New(t)
	d := daemon.New(t, ns, daemon.Options{Config: "integrity:\n  enabled: false\nmetrics:\n  enabled: true\n  listen: 127.0.0.1:9477\n"})
	d.Start()
	d.MustParry("block", "203.0.113.7", "--for", "1h", "--reason", "prometheus test")
	d.MustParry("signal", "auth_failure", "--ip", "198.51.100.9", "--source", "prom-test")
	d.MustParry("lockdown", "--for", "10m", "--allow", "192.0.2.0/24", "--reason", "prometheus test")

	dir := t.TempDir()
	rules, err := filepath.Abs(rulesFile)
	if err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf(`global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files: [%q]
scrape_configs:
  - job_name: parry
    static_configs: [{targets: ["127.0.0.1:9477"]}]
`, rules)), 0o644); err != nil {
		t.Fatal(err)
	}
	// Bounded lifetime: killed (its process group) when the test ends or
	// after two minutes, whichever is first.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	cmd := ns.Command(ctx, prom, "--config.file="+cfg, "--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address=127.0.0.1:9090", "--log.level=warn")
	var log bytes.Buffer
	cmd.Stdout, cmd.Stderr = &log, &log
	if err := cmd.Start(); err != nil {
		cancel()
		t.Fatalf("start prometheus: %v", err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		cancel()
		<-done
		if t.Failed() {
			t.Logf("prometheus log:\n%s", log.String())
		}
	})

	// query asks Prometheus' API for an instant vector: labels -> value.
	query := func(q string) map[string]string {
		var resp struct {
			Status string `json:"status"`
			Data   struct {
				Result []struct {
					Metric map[string]string `json:"metric"`
					Value  [2]any            `json:"value"`
				} `json:"result"`
			} `json:"data"`
		}
		if !getJSON(t, ns, "/api/v1/query?query="+url.QueryEscape(q), &resp) || resp.Status != "success" {
			return nil
		}
		out := map[string]string{}
		for _, r := range resp.Data.Result {
			out[fmt.Sprint(r.Metric)] = fmt.Sprint(r.Value[1])
		}
		return out
	}
	one := func(q string) string {
		for _, v := range query(q) {
			return v
		}
		return ""
	}
	netns.Eventually(t, 60*time.Second, "Prometheus scraped parryd (up == 1)", func() bool { return one(`up{job="parry"}`) == "1" })
	for _, c := range []struct{ q, want string }{
		{`parry_blocks_active{job="parry",family="ipv4"}`, "1"},
		{`parry_lockdown_active{job="parry"}`, "1"},
		{`sum(parry_decisions_total{job="parry",action="block",result="applied"})`, "1"},
		{`sum(parry_signals_total{job="parry",kind="auth_failure"})`, "1"},
		{`count(parry_lockdown_until_timestamp_seconds{job="parry"} > time())`, "1"},
		{`parry_audit_chain_ok{job="parry"}`, "1"},
		{`parry_table_reasserts_total{job="parry",reason="start"}`, "1"},
		{`parry_table_heals_total{job="parry"}`, "0"},
		{`count(process_resident_memory_bytes{job="parry"})`, "1"},
		{`count(parry_source_last_line_timestamp_seconds{job="parry",source="journal"})`, "1"}, // the default source, from its start
	} {
		if got := one(c.q); got != c.want {
			t.Errorf("%s = %q, want %s (all: %v)", c.q, got, c.want, query(c.q))
		}
	}
	// The shipped rules run in the real server: the lockdown alert fires.
	netns.Eventually(t, 30*time.Second, "ParryLockdownActive firing in Prometheus", func() bool {
		var resp struct {
			Data struct {
				Alerts []struct {
					Labels map[string]string `json:"labels"`
					State  string            `json:"state"`
				} `json:"alerts"`
			} `json:"data"`
		}
		if !getJSON(t, ns, "/api/v1/alerts", &resp) {
			return false
		}
		for _, a := range resp.Data.Alerts {
			if a.Labels["alertname"] == "ParryLockdownActive" && a.State == "firing" && a.Labels["severity"] == "page" {
				return true
			}
		}
		return false
	})
	var rulesResp struct {
		Data struct {
			Groups []struct {
				Rules []struct {
					Name   string `json:"name"`
					Health string `json:"health"`
				} `json:"rules"`
			} `json:"groups"`
		} `json:"data"`
	}
	netns.Eventually(t, 30*time.Second, "every rule evaluated without error", func() bool {
		if !getJSON(t, ns, "/api/v1/rules", &rulesResp) || len(rulesResp.Data.Groups) != 1 {
			return false
		}
		for _, r := range rulesResp.Data.Groups[0].Rules {
			if r.Health != "ok" {
				return false
			}
		}
		return len(rulesResp.Data.Groups[0].Rules) == 10
	})
}

// getJSON GETs path from Prometheus on the namespace's loopback (socat
// inside the namespace, bounded) and decodes the body; false on any error
// (the caller polls).
func getJSON(t *testing.T, ns *netns.NS, path string, v any) bool {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cmd := ns.Command(ctx, "socat", "-t", "5", "-", "TCP:127.0.0.1:9090,shut-none")
	cmd.Stdin = strings.NewReader("GET " + path + " HTTP/1.0\r\nHost: localhost\r\n\r\n")
	out, err := cmd.Output()
	if err != nil {
		return false
	}
	head, body, ok := strings.Cut(string(out), "\r\n\r\n")
	if !ok || !strings.Contains(strings.SplitN(head, "\r\n", 2)[0], " 200") {
		return false
	}
	return json.Unmarshal([]byte(body), v) == nil
}
