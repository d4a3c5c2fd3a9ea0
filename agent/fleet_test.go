package agent

import (
	"context"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/parryhq/parry/agent/enforce"
	"github.com/parryhq/parry/agent/fleet"
	"github.com/parryhq/parry/response"
)

func TestFleetConfigSection(t *testing.T) {
	dir := t.TempDir()
	write := func(body string) string {
		p := filepath.Join(dir, "parry.yaml")
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	cfg, err := LoadConfig(write("fleet:\n  servers: [nats://10.0.0.5:4222]\n  name: web-1\n  queue_size: 50\n"), false)
	if err != nil {
		t.Fatalf("valid fleet section: %v", err)
	}
	if !cfg.Fleet.Enabled() || cfg.Fleet.Name != "web-1" || cfg.Fleet.QueueSize != 50 {
		t.Errorf("fleet section decoded as %+v", cfg.Fleet)
	}
	if cfg, err := LoadConfig(write("table: parry\n"), false); err != nil || cfg.Fleet.Enabled() {
		t.Errorf("no fleet section: enabled=%v err=%v; want off", cfg.Fleet.Enabled(), err)
	}
	for body, want := range map[string]string{
		"fleet:\n  serverz: [nats://x:1]\n":              "field serverz not found",
		"fleet:\n  servers: [http://x:1]\n":              "fleet: servers:",
		"fleet:\n  servers: [nats://x:1]\n  name: a b\n": "fleet: name:",
	} {
		if _, err := LoadConfig(write(body), false); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("config %q: err = %v; want one mentioning %q", body, err, want)
		}
	}
}

func TestApplyRemoteGoesThroughTheGuard(t *testing.T) {
	fw := newFakeFW()
	clk := &clock{t: time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)}
	d := newTestDaemon(t, testConfig(t), fw, clk)
	ctx := context.Background()
	until := clk.Now().Add(time.Hour)
	remote := func(targets ...string) response.Decision {
		dec := response.Decision{ID: "r1", Action: response.ActionBlock, Until: until, Source: "fleet", Origin: "b", Reason: "from b"}
		for _, s := range targets {
			dec.Targets = append(dec.Targets, netip.MustParsePrefix(s))
		}
		return dec
	}
	// allowlisted 198.51.100.10 refused, the other target applied
	refused, err := d.fleet.ApplyRemote(ctx, remote("198.51.100.10/32", "203.0.113.5/32"))
	if err != nil || refused != 1 {
		t.Fatalf("mixed remote block: refused %d, err %v; want 1, nil", refused, err)
	}
	if got := fw.state(); got != "block 203.0.113.5/32 timeout=1h0m0s" {
		t.Errorf("kernel after a remote block:\n%s", got)
	}
	bs := blocksOf(t, d)
	if len(bs) != 1 || bs[0].Origin != "b" || bs[0].Source != "fleet" {
		t.Errorf("blocks %+v; want one from origin b, source fleet", bs)
	}
	for name, dec := range map[string]response.Decision{
		"allowlisted": remote("198.51.100.10/32"),
		"own address": remote("192.0.2.1/32"),
		"loopback":    remote("127.0.0.1/32"),
		"lockdown":    {ID: "l", Action: response.ActionLockdown, Until: until, Origin: "b"},
		"no origin":   {ID: "n", Action: response.ActionBlock, Until: until, Targets: []netip.Prefix{netip.MustParsePrefix("203.0.113.6/32")}},
	} {
		if _, err := d.fleet.ApplyRemote(ctx, dec); err == nil {
			t.Errorf("%s: remote decision applied; want refused", name)
		}
	}
	if got := fw.state(); got != "block 203.0.113.5/32 timeout=1h0m0s" {
		t.Errorf("refused remote decisions changed the kernel:\n%s", got)
	}
	if _, err := d.fleet.ApplyRemote(ctx, response.Decision{ID: "u", Action: response.ActionUnblock, Origin: "b",
		Targets: []netip.Prefix{netip.MustParsePrefix("203.0.113.5/32")}}); err != nil || fw.state() != "" {
		t.Errorf("remote unblock: err %v, kernel %q; want nil and empty", err, fw.state())
	}
}

// TestObserverPublishesWhatTookEffect checks what the daemon hands to the
// fleet (its queue: the fleet is not connected here).
func TestObserverPublishesWhatTookEffect(t *testing.T) {
	fw := newFakeFW()
	clk := &clock{t: time.Now()}
	d := newTestDaemon(t, testConfig(t), fw, clk)
	f, err := fleet.New(fleet.Config{Servers: []string{"nats://127.0.0.1:1"}, Name: "a"}, d.fleet, fleet.Options{})
	if err != nil {
		t.Fatal(err)
	}
	d.path.Observe(publishToFleet(f))
	ctx := context.Background()
	p := func(s ...string) []netip.Prefix {
		var out []netip.Prefix
		for _, x := range s {
			out = append(out, netip.MustParsePrefix(x))
		}
		return out
	}
	until := clk.Now().Add(time.Hour)
	steps := []struct {
		name  string
		run   func()
		queue int
	}{
		{"partial block: only the applied target", func() {
			_, _ = d.path.EnforceWith(ctx, response.Decision{Action: response.ActionBlock, Targets: p("203.0.113.1/32", "198.51.100.10/32"), Until: until}, enforce.EnforceOptions{Partial: true})
		}, 1},
		{"refused block: nothing", func() {
			_, _ = d.path.Enforce(ctx, response.Decision{Action: response.ActionBlock, Targets: p("198.51.100.10/32"), Until: until})
		}, 1},
		{"remote block: nothing", func() {
			_, _ = d.fleet.ApplyRemote(ctx, response.Decision{ID: "r", Action: response.ActionBlock, Targets: p("203.0.113.2/32"), Until: until, Origin: "b"})
		}, 1},
		{"lockdown: nothing", func() {
			_, _ = d.path.Enforce(ctx, response.Decision{Action: response.ActionLockdown, Until: until})
		}, 1},
		{"unblock, even of a target not blocked here", func() {
			_, _ = d.path.Enforce(ctx, response.Decision{Action: response.ActionUnblock, Targets: p("203.0.113.1/32", "203.0.113.9/32")})
		}, 3},
	}
	for _, s := range steps {
		s.run()
		if got := f.Status().Queued; got != s.queue {
			t.Fatalf("%s: fleet queue %d; want %d", s.name, got, s.queue)
		}
	}
}
