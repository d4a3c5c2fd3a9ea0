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
		if err := d.heal.Reconcile("bench"); err != nil {
			b.Fatal(err)
		}
		var all []netip.Prefix
		for i := range 100_000 {
			all = append(all, netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(1 + i>>16), byte(i >> 8), byte(i)}), 32))
		}
		b.StartTimer()
		for i := 0; i < len(all); i += 4400 {
			chunk := all[i:min(i+4400, len(all))]
			if _, err := d.path.Enforce(context.Background(), response.Decision{Action: response.ActionBlock, Targets: chunk, Until: time.Now().Add(time.Hour)}); err != nil {
				b.Fatal(err)
			}
		}
		b.StopTimer()
		fw.Remove()
		d.Close()
	}
}

// BenchmarkLoadAndReassert100k: the daemon's share of a start with 100k
// stored blocks and no table: open the store, load the index, create the
// table and re-assert every block (what happens before READY=1).
func BenchmarkLoadAndReassert100k(b *testing.B) {
	ns := netns.New(b)
	conn := ns.Conn(b, firewall.ConnOptions()...)
	fw, err := firewall.New(conn, firewall.Config{Table: "pbload"})
	if err != nil {
		b.Fatal(err)
	}
	cfg := DefaultConfig()
	cfg.StateDir = b.TempDir()
	cfg.Socket = cfg.StateDir + "/s.sock"
	cfg.Validate()
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	noAddrs := func() ([]netip.Addr, error) { return nil, nil }
	d, err := New(cfg, Options{Firewall: fw, Logger: quiet, HostAddrs: noAddrs})
	if err != nil {
		b.Fatal(err)
	}
	d.heal.Reconcile("bench")
	for i := 0; i < 100_000; i += 4400 {
		var chunk []netip.Prefix
		for j := i; j < min(i+4400, 100_000); j++ {
			chunk = append(chunk, netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(1 + j>>16), byte(j >> 8), byte(j)}), 32))
		}
		if _, err := d.path.Enforce(context.Background(), response.Decision{Action: response.ActionBlock, Targets: chunk, Until: time.Now().Add(time.Hour)}); err != nil {
			b.Fatal(err)
		}
	}
	d.Close()
	var load, reassert time.Duration
	b.ResetTimer()
	for range b.N {
		fw.Remove()
		t0 := time.Now()
		d, err := New(cfg, Options{Firewall: fw, Logger: quiet, HostAddrs: noAddrs})
		if err != nil {
			b.Fatal(err)
		}
		t1 := time.Now()
		if err := d.heal.Reconcile("start"); err != nil {
			b.Fatal(err)
		}
		load, reassert = load+t1.Sub(t0), reassert+time.Since(t1)
		d.Close()
	}
	b.ReportMetric(float64(load.Milliseconds())/float64(b.N), "load-ms")
	b.ReportMetric(float64(reassert.Milliseconds())/float64(b.N), "reassert-ms")
}

// BenchmarkEnforceOne: one single-address block through Enforce into a real
// kernel, in-process: the floor under the socket latency.
func BenchmarkEnforceOne(b *testing.B) {
	ns := netns.New(b)
	fw, err := firewall.New(ns.Conn(b, firewall.ConnOptions()...), firewall.Config{Table: "pbone"})
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
	defer d.Close()
	d.heal.Reconcile("bench")
	var fwT time.Duration
	b.ResetTimer()
	for i := range b.N {
		p := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(1 + i>>16), byte(i >> 8), byte(i)}), 32)
		if _, err := d.path.Enforce(context.Background(), response.Decision{Action: response.ActionBlock, Targets: []netip.Prefix{p}, Until: time.Now().Add(time.Hour)}); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	for i := range min(b.N, 500) {
		p := netip.PrefixFrom(netip.AddrFrom4([4]byte{11, byte(1 + i>>16), byte(i >> 8), byte(i)}), 32)
		t0 := time.Now()
		fw.Block([]firewall.Element{{Prefix: p, Timeout: time.Hour}})
		fwT += time.Since(t0)
	}
	b.ReportMetric(float64(fwT.Microseconds())/float64(min(b.N, 500)), "fw-block-alone-µs")
}
