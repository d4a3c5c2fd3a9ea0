package agent

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"testing"
	"time"

	"github.com/parryhq/parry/agent/api"
	"github.com/parryhq/parry/agent/enforce"
	webhook "github.com/parryhq/parry/agent/notify"
	"github.com/parryhq/parry/response"
)

// BenchmarkEnforceObserverCost: one single-address block per op through
// Enforce (store fsync included, fake firewall), without the incident
// tooling and with it in its most expensive setting: a webhook whose
// endpoint hangs and a connection lookup queued after every block. The
// difference is what the observer adds to enforcement.
func BenchmarkEnforceObserverCost(b *testing.B) {
	hang := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { <-hang }))
	defer srv.Close()
	defer close(hang)
	for _, withIncident := range []bool{false, true} {
		b.Run(fmt.Sprintf("incident=%v", withIncident), func(b *testing.B) {
			cfg := DefaultConfig()
			cfg.StateDir = b.TempDir()
			cfg.Socket = cfg.StateDir + "/s.sock"
			cfg.Notify = webhook.Config{Webhooks: []webhook.Webhook{{URL: srv.URL}}, Timeout: api.Duration(time.Hour)}
			cfg.Metrics.Enabled = true
			cfg.Metrics.Listen = "127.0.0.1:0"
			if err := cfg.Validate(); err != nil {
				b.Fatal(err)
			}
			d, err := New(cfg, Options{Firewall: TimeApply(newFakeFW()), Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
				HostAddrs: func() ([]netip.Addr, error) { return nil, nil }})
			if err != nil {
				b.Fatal(err)
			}
			defer d.Close()
			d.heal.Reconcile("bench")
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			if withIncident {
				in, err := AttachIncident(d, "")
				if err != nil {
					b.Fatal(err)
				}
				go in.Run(ctx)
			}
			until := time.Now().Add(time.Hour)
			b.ResetTimer()
			for i := range b.N {
				p := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}), 32)
				if _, err := d.path.Enforce(ctx, response.Decision{Action: response.ActionBlock, Targets: []netip.Prefix{p}, Until: until}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkObserve: the synchronous part the incident tooling adds to each
// Enforce (it runs under the daemon's lock): metrics, the webhook enqueue,
// the connection-lookup enqueue. Everything slow happens elsewhere.
func BenchmarkObserve(b *testing.B) {
	cfg := DefaultConfig()
	cfg.StateDir = b.TempDir()
	cfg.Socket = cfg.StateDir + "/s.sock"
	cfg.Notify = webhook.Config{Webhooks: []webhook.Webhook{{URL: "http://127.0.0.1:1/"}}}
	cfg.Metrics.Enabled = true
	if err := cfg.Validate(); err != nil {
		b.Fatal(err)
	}
	d, err := New(cfg, Options{Firewall: TimeApply(newFakeFW()), Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		HostAddrs: func() ([]netip.Addr, error) { return nil, nil }})
	if err != nil {
		b.Fatal(err)
	}
	defer d.Close()
	in, err := AttachIncident(d, "")
	if err != nil {
		b.Fatal(err)
	}
	go func() { // drain the lookup queue as the worker would, without walking /proc
		for range in.pendSig {
			in.pendMu.Lock()
			in.pending = in.pending[:0]
			in.pendMu.Unlock()
		}
	}()
	p := netip.MustParsePrefix("203.0.113.7/32")
	dec := response.Decision{ID: "x", Action: response.ActionBlock, Targets: []netip.Prefix{p}, Until: time.Now().Add(time.Hour), Source: "policy"}
	out := enforce.Outcome{ID: "x", Action: response.ActionBlock, Added: 1, Applied: []netip.Prefix{p}}
	b.ResetTimer()
	for range b.N {
		in.observe(dec, out, enforce.State{Blocks4: 1})
	}
}
