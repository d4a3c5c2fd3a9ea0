package fleet_test

import (
	"encoding/json"
	"fmt"
	"github.com/parryhq/parry/test/netns"
	"net/netip"
	"os"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/parryhq/parry/agent/client"
)

// Bounds: every benchmark stops at these, whatever b.N asks.
const (
	maxPropagationRuns = 500
	benchDeadline      = 3 * time.Minute
	bulkDecisions      = 10_000
)

// BenchmarkFleetPropagation measures, per block decided on a (one request on
// its control socket), the time until the element is in the kernel of b and
// of c, and quotes a's own time to enforce and answer as the baseline.
// Run: go test -run '^$' -bench FleetPropagation -benchtime 200x ./test/fleet/
func BenchmarkFleetPropagation(b *testing.B) {
	l := newLab(b)
	a, hb, hc := l.hosts["a"], l.hosts["b"], l.hosts["c"]
	var local, toB, toC, both []time.Duration
	deadline := time.Now().Add(benchDeadline)
	b.ResetTimer()
	for i := 0; i < b.N && i < maxPropagationRuns && time.Now().Before(deadline); i++ {
		target := netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 0x0b, 0xe0, 14: byte(i >> 8), 15: byte(i)})
		start := time.Now()
		a.block(b, target, "bench")
		local = append(local, time.Since(start))
		var wg sync.WaitGroup
		var db, dc time.Duration
		for _, w := range []struct {
			h *host
			d *time.Duration
		}{{hb, &db}, {hc, &dc}} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if !netns.Poll(10*time.Second, 500*time.Microsecond, func() bool { return w.h.inKernel(b, target) }) {
					*w.d = -1
					return
				}
				*w.d = time.Since(start)
			}()
		}
		wg.Wait()
		if db < 0 || dc < 0 {
			b.Fatalf("block %d (%s) did not reach b and c within 10s", i, target)
		}
		toB, toC, both = append(toB, db), append(toC, dc), append(both, max(db, dc))
	}
	b.StopTimer()
	report(b, "a enforces and answers (baseline)", local)
	report(b, "a -> kernel of b", toB)
	report(b, "a -> kernel of c", toC)
	report(b, "a -> kernels of b and c", both)
	b.ReportMetric(ms(pct(both, 50)), "p50-ms")
	b.ReportMetric(ms(pct(both, 99)), "p99-ms")
}

// BenchmarkFleetBulk measures the time from the first of 10,000 blocks sent
// to a until all 10,000 are in the kernels of a, b and c: sent as 10,000
// decisions (pipelined on one connection, one target each), and as one
// decision with 10,000 targets.
// Run: go test -run '^$' -bench FleetBulk -benchtime 1x ./test/fleet/
func BenchmarkFleetBulk(b *testing.B) {
	targets := make([]string, bulkDecisions)
	for i := range targets {
		targets[i] = netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 0x0b, 0x01, 13: byte(i >> 16), 14: byte(i >> 8), 15: byte(i)}).String()
	}
	separate := make([][]byte, bulkDecisions)
	for i, t := range targets {
		separate[i] = fmt.Appendf(nil, `{"op":"block","targets":[%q],"for":"1h","reason":"bulk"}`, t)
	}
	one, _ := json.Marshal(map[string]any{"op": "block", "targets": targets, "for": "1h", "reason": "bulk"})
	b.Run("decisions", func(b *testing.B) { bulk(b, "10,000 decisions", separate) })
	b.Run("targets", func(b *testing.B) { bulk(b, "1 decision of 10,000 targets", [][]byte{one}) })
}

func bulk(b *testing.B, what string, reqs [][]byte) {
	l := newLab(b)
	for _, h := range l.hosts { // the control socket's default limits would refuse such bursts
		h.d.Stop()
		h.d.WriteConfig(l.config(h, "control: {rate: 1000000, burst: 1000000, max_line_bytes: 4194304}\n"))
		h.d.Start()
	}
	a := l.hosts["a"]
	b.ResetTimer()
	for n := 0; n < b.N && n < 1; n++ {
		c, err := client.Dial(a.d.Socket)
		if err != nil {
			b.Fatal(err)
		}
		start := time.Now()
		failed := 0
		err = c.Pipeline(reqs, func(_ int, r client.Response) error {
			if !r.OK {
				failed++
			}
			return nil
		})
		c.Close()
		if err != nil || failed > 0 {
			b.Fatalf("sending %s to a: %v, %d refused", what, err, failed)
		}
		answered := time.Since(start)
		reached := map[string]time.Duration{}
		var mu sync.Mutex
		var wg sync.WaitGroup
		for name, h := range l.hosts {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if netns.Poll(benchDeadline-time.Since(start), 20*time.Millisecond, func() bool {
					els, err := h.nft.Elements()
					return err == nil && len(els) >= bulkDecisions
				}) {
					mu.Lock()
					reached[name] = time.Since(start)
					mu.Unlock()
				}
			}()
		}
		wg.Wait()
		if len(reached) != 3 {
			b.Fatalf("after %v only %v held all %d blocks", benchDeadline, reached, bulkDecisions)
		}
		all := max(reached["a"], reached["b"], reached["c"])
		fmt.Printf("fleet bulk, %s on a: a answered in %v; in the kernel of a %v, b %v, c %v; all three %v (%.0f blocks/s)\n",
			what, answered.Round(time.Millisecond), reached["a"].Round(time.Millisecond), reached["b"].Round(time.Millisecond),
			reached["c"].Round(time.Millisecond), all.Round(time.Millisecond), float64(bulkDecisions)/all.Seconds())
		b.ReportMetric(all.Seconds(), "s-all-three")

		// A host that lost everything catches up from the stream.
		hc := l.hosts["c"]
		hc.d.Stop()
		if err := os.RemoveAll(hc.d.StateDir); err != nil {
			b.Fatal(err)
		}
		hc.ns.MustRun(b, "nft", "delete", "table", "inet", "parry")
		start = time.Now()
		hc.d.Start()
		netns.Poll(benchDeadline, 20*time.Millisecond, func() bool {
			els, err := hc.nft.Elements()
			return err == nil && len(els) >= bulkDecisions
		})
		fmt.Printf("fleet catch-up, %s: a wiped c reported READY after %v (catchup_timeout 15s) and held all %d after %v\n",
			what, hc.d.ReadyAfter().Round(time.Millisecond), bulkDecisions, time.Since(start).Round(time.Millisecond))
	}
}

func pct(ds []time.Duration, p int) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	if len(s) == 0 {
		return 0
	}
	i := (len(s)*p + 99) / 100
	return s[min(max(i-1, 0), len(s)-1)]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func report(b *testing.B, what string, ds []time.Duration) {
	fmt.Printf("fleet propagation: %-34s n=%d median %.1f ms  p99 %.1f ms  max %.1f ms\n",
		what, len(ds), ms(pct(ds, 50)), ms(pct(ds, 99)), ms(slices.Max(ds)))
}
