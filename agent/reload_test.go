package agent

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/parryhq/parry/agent/api"
	webhook "github.com/parryhq/parry/agent/notify"
	"github.com/parryhq/parry/integrity"
	"github.com/parryhq/parry/response"
	"github.com/parryhq/parry/test/netns"
)

// integrityDaemon is incidentDaemon with the integrity watcher running on
// dir (a first baseline recorded by itself).
func integrityDaemon(t *testing.T, dir string, mutate func(*Config)) (*Daemon, *Incident) {
	t.Helper()
	d, in := incidentDaemon(t, func(c *Config) {
		iv := api.Duration(0)
		c.Integrity = integrity.Config{Paths: []integrity.PathSpec{{Path: dir}}, Rules: []integrity.Rule{},
			PackageManager: "none", ScanInterval: &iv}
		if mutate != nil {
			mutate(c)
		}
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { d.integ.run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	netns.Eventually(t, 20*time.Second, "integrity watcher running", func() bool {
		mon, err := d.integ.monitor()
		if err != nil {
			return false
		}
		st, err := mon.Status(context.Background())
		return err == nil && st.Running
	})
	return d, in
}

func findingAudited(t *testing.T, d *Daemon, path string) bool {
	return slices.ContainsFunc(auditEvents(t, d, "integrity_finding"), func(f map[string]any) bool { return f["path"] == path })
}

// TestReloadIntegrityWithoutRestart: a reload that adds a watched path and
// a permission rule applies both to the running watcher (a file created
// in the new path and the rule's violation are audited, no restart); a
// new hash algorithm needs a restart and says so in the answer of op
// reload and in the config_reload audit line, keeping the old one.
func TestReloadIntegrityWithoutRestart(t *testing.T) {
	a, b := t.TempDir(), t.TempDir()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.WriteFile(filepath.Join(a, "secret"), []byte("k"), 0o644))
	d, _ := integrityDaemon(t, a, nil)

	next := d.Config()
	next.Integrity.Paths = append(slices.Clone(next.Integrity.Paths), integrity.PathSpec{Path: b})
	next.Integrity.Rules = []integrity.Rule{{Path: filepath.Join(a, "secret"), ModeMax: "0600"}}
	next.Integrity.Hash = integrity.HashBLAKE3
	d.reload = func() (api.ReloadResult, error) { return d.applyConfig(next) }
	resp := d.server.HandleLine(context.Background(), rootPeer, []byte(`{"op":"reload"}`))
	var ans struct {
		OK           bool     `json:"ok"`
		NeedsRestart []string `json:"needs_restart"`
	}
	if err := json.Unmarshal(resp, &ans); err != nil || !ans.OK || !slices.Equal(ans.NeedsRestart, []string{"integrity.hash"}) {
		t.Fatalf("reload answer %s", resp)
	}
	if d.Config().Integrity.Hash != "" {
		t.Errorf("config in force has hash %q; the old one stays until a restart", d.Config().Integrity.Hash)
	}
	rel := auditEvents(t, d, "config_reload")
	if len(rel) != 1 || !strings.Contains(strings.Join(anyStrings(rel[0]["needs_restart"]), ","), "integrity.hash") {
		t.Errorf("config_reload audit %v", rel)
	}
	if !findingAudited(t, d, filepath.Join(a, "secret")) {
		t.Error("the new permission rule was not applied at reload")
	}
	created := filepath.Join(b, "new.conf")
	must(os.WriteFile(created, []byte("x"), 0o644))
	netns.Eventually(t, 10*time.Second, "finding in the path added by reload", func() bool { return findingAudited(t, d, created) })
}

func anyStrings(v any) []string {
	var out []string
	if l, ok := v.([]any); ok {
		for _, x := range l {
			s, _ := x.(string)
			out = append(out, s)
		}
	}
	return out
}

// TestReloadWebhookURL: after a reload that gives a webhook a new URL,
// events go there, and one queued (retrying) before the reload is not
// lost: its next attempt goes to the new URL.
func TestReloadWebhookURL(t *testing.T) {
	oldHits := make(chan struct{}, 16)
	oldSrv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		oldHits <- struct{}{}
		w.WriteHeader(http.StatusServiceUnavailable) // retried
	}))
	defer oldSrv.Close()
	got := make(chan string, 16)
	newSrv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		got <- string(b)
	}))
	defer newSrv.Close()
	d, in := incidentDaemon(t, func(c *Config) {
		c.Notify = webhook.Config{Webhooks: []webhook.Webhook{{Name: "ops", URL: oldSrv.URL}}, MinSeverity: "low",
			Events: []string{"finding"}, Backoff: api.Duration(200 * time.Millisecond), MaxBackoff: api.Duration(200 * time.Millisecond)}
	})
	sig := func(path string) response.Signal {
		return response.Signal{Kind: "integrity_violation", Source: "integrity", Path: path, Severity: "high",
			Detail: "changed", Attrs: map[string]string{"finding": "changed"}}
	}
	d.observeFinding(sig("/etc/before"))
	select {
	case <-oldHits:
	case <-time.After(10 * time.Second):
		t.Fatal("the old URL was never called")
	}
	next := d.Config()
	next.Notify.Webhooks = []webhook.Webhook{{Name: "ops", URL: newSrv.URL}}
	res, err := d.applyConfig(next)
	if err != nil || len(res.NeedsRestart)+len(res.NotApplied) != 0 {
		t.Fatalf("reload: %+v %v", res, err)
	}
	d.observeFinding(sig("/etc/after"))
	var bodies []string
	for len(bodies) < 2 {
		select {
		case b := <-got:
			bodies = append(bodies, b)
		case <-time.After(10 * time.Second):
			t.Fatalf("new URL got %d events, want 2 (the retried one and the new one): %v", len(bodies), bodies)
		}
	}
	all := strings.Join(bodies, "\n")
	if !strings.Contains(all, "/etc/before") || !strings.Contains(all, "/etc/after") {
		t.Errorf("bodies at the new URL: %v", bodies)
	}
	netns.Eventually(t, 10*time.Second, "both delivered, one after a retry", func() bool {
		st := in.notifier.Stats()
		return len(st) == 1 && st[0].Delivered == 2 && st[0].Retries > 0
	})
}

func freePort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

func scrape(url string) int {
	c := &http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

// TestReloadMovesMetrics: a new metrics.listen is bound at reload (the old
// address closed after the new one is open), a new path on the same
// address is served after a rebind, and metrics.enabled needs a restart.
func TestReloadMovesMetrics(t *testing.T) {
	first := freePort(t)
	d, _ := incidentDaemon(t, func(c *Config) { c.Metrics.Enabled = true; c.Metrics.Listen = first })
	netns.Eventually(t, 10*time.Second, "metrics served", func() bool { return scrape("http://"+first+"/metrics") == 200 })

	second := freePort(t)
	next := d.Config()
	next.Metrics.Listen = second
	if res, err := d.applyConfig(next); err != nil || len(res.NotApplied) != 0 {
		t.Fatalf("reload: %+v %v", res, err)
	}
	if scrape("http://"+second+"/metrics") != 200 || scrape("http://"+first+"/metrics") != 0 {
		t.Fatal("metrics did not move to the new address")
	}
	next.Metrics.Path = "/m2"
	next.Metrics.Enabled = false
	res, err := d.applyConfig(next)
	if err != nil || len(res.NotApplied) != 0 || !slices.Equal(res.NeedsRestart, []string{"metrics.enabled"}) {
		t.Fatalf("reload: %+v %v", res, err)
	}
	if scrape("http://"+second+"/m2") != 200 {
		t.Fatal("new path not served after the reload")
	}
	// An address that cannot be bound keeps the old endpoint.
	next = d.Config()
	next.Metrics.Listen = "192.0.2.1:1" // not an address of this host
	if res, err := d.applyConfig(next); err != nil || len(res.NotApplied) != 1 {
		t.Fatalf("reload to an address that cannot be bound: %+v %v", res, err)
	}
	if scrape("http://"+second+"/m2") != 200 || d.Config().Metrics.Listen != second {
		t.Fatal("a failed move lost the old endpoint")
	}
}
