package agent

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"testing"
	"time"

	"github.com/parryhq/parry/firewall"
	"github.com/parryhq/parry/response"
	"github.com/parryhq/parry/test/netns"
)

// BenchmarkEnforceChunks100k: the daemon's share of `parry block --file`
// with 100k IPs: 23 chunks of ~4,400 targets through Enforce into a real
// kernel (a throwaway namespace), in-process, without the socket.
func BenchmarkEnforceChunks100k(b *testing.B) {
	ns := netns.New(b)
	for range b.N {
		fw, err := firewall.New(ns.Conn(b, firewall.ConnOptions()...), firewall.Config{Table: fmt.Sprintf("pb%d", time.Now().UnixNano()%100000)})
		if err != nil {
			b.Fatal(err)
		}
		cfg := DefaultConfig()
		cfg.StateDir = b.TempDir()
		cfg.Socket = cfg.StateDir + "/s.sock"
		cfg.Validate()
		d, err := New(cfg, Options{Firewall: fw, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
			HostAddrs: func() ([]netip.Addr, error) { return nil, nil }})
		if err != nil {
			b.Fatal(err)
		}
		if err := d.Reconcile("bench"); err != nil {
			b.Fatal(err)
		}
		var all []netip.Prefix
		for i := range 100_000 {
			all = append(all, netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(1 + i>>16), byte(i >> 8), byte(i)}), 32))
		}
		b.StartTimer()
		for i := 0; i < len(all); i += 4400 {
			chunk := all[i:min(i+4400, len(all))]
			if _, err := d.Enforce(context.Background(), response.Decision{Action: response.ActionBlock, Targets: chunk, Until: time.Now().Add(time.Hour)}); err != nil {
				b.Fatal(err)
			}
		}
		b.StopTimer()
		fw.Remove()
		d.Close()
	}
}
