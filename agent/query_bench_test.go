package agent

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"testing"
	"time"

	"github.com/parryhq/parry/agent/control"
	"github.com/parryhq/parry/agent/enforce"
	"github.com/parryhq/parry/response"
)

// BenchmarkQuery100k: `parry why ADDR` and `parry list --contains ADDR`
// (and, for comparison, a filter that scans: --source) over 100,000
// blocks — 90,000 addresses and 10,000 /24s, of a few causes — as the
// daemon answers them: request line decoded, the op run, the answer
// encoded (control.Server.HandleLine), in-process with a fake kernel.
// The CLI process adds its own start (a few ms).
func BenchmarkQuery100k(b *testing.B) {
	cfg := DefaultConfig()
	cfg.StateDir = b.TempDir()
	cfg.Socket = cfg.StateDir + "/s.sock"
	cfg.Control.Rate, cfg.Control.Burst = 1e9, 1e9 // the benchmark is not a flood
	if err := cfg.Validate(); err != nil {
		b.Fatal(err)
	}
	d, err := New(cfg, Options{Firewall: newFakeFW(), Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		HostAddrs: func() ([]netip.Addr, error) { return nil, nil }})
	if err != nil {
		b.Fatal(err)
	}
	defer d.Close()
	if err := d.heal.Reconcile("bench"); err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	var singles, nets []netip.Prefix
	for i := range 90_000 {
		singles = append(singles, netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(1 + i>>16), byte(i >> 8), byte(i)}), 32))
	}
	for i := range 10_000 {
		nets = append(nets, netip.PrefixFrom(netip.AddrFrom4([4]byte{20, byte(i >> 8), byte(i), 0}), 24))
	}
	until := time.Now().Add(time.Hour)
	for i := 0; i < len(singles); i += 5000 {
		dec := response.Decision{Action: response.ActionBlock, Targets: singles[i:min(i+5000, len(singles))], Until: until,
			Source: "policy", Reason: fmt.Sprintf("batch %d", i), Cause: []response.Signal{{Kind: "auth_failure", Source: "sshd"}}}
		if _, err := d.path.Enforce(ctx, dec); err != nil {
			b.Fatal(err)
		}
	}
	if _, err := d.path.ApplyFeed(ctx, enforce.FeedChange{Feed: "big", Block: nets, Until: until}); err != nil {
		b.Fatal(err)
	}
	if _, err := d.path.Enforce(ctx, response.Decision{Action: response.ActionBlock, Targets: mustPrefixes("20.0.7.9/32"), Until: until, Source: "cli", Admin: true}); err != nil {
		b.Fatal(err)
	}
	root := control.ResolvePeer(control.Peer{UID: 0, GID: 0}, nil)
	for _, c := range []struct{ name, line string }{
		{"why", `{"op":"why","addr":"20.0.7.9"}`},
		{"list-contains", `{"op":"list","contains":"20.0.7.9"}`},
		{"list-source-scan", `{"op":"list","source":"cli"}`},
	} {
		b.Run(c.name, func(b *testing.B) {
			var ans []byte
			for b.Loop() {
				ans = d.server.HandleLine(ctx, root, []byte(c.line))
			}
			if !bytes.HasPrefix(ans, []byte(`{"ok":true`)) {
				b.Fatalf("answer: %s", ans)
			}
			n := len(ans)
			b.ReportMetric(float64(n), "answer-bytes")
			if testing.Verbose() {
				b.Logf("%s", d.server.HandleLine(ctx, root, []byte(c.line)))
			}
		})
	}
}

func mustPrefixes(ss ...string) []netip.Prefix {
	out := make([]netip.Prefix, len(ss))
	for i, s := range ss {
		out[i] = netip.MustParsePrefix(s)
	}
	return out
}
