package e2e

// Benchmarks of the whole daemon. They print figures and assert nothing
// about time. Run as root, e.g.:
//
//	go test ./test/e2e -run '^$' -bench . -benchtime 1x
//	go test ./test/e2e -run '^$' -bench BlockLatency -benchtime 2000x

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/parryhq/parry/agent/store"
	"github.com/parryhq/parry/test/daemon"
	"github.com/parryhq/parry/test/netns"
)

// ipN is the i-th benchmark address: every other address from 10.1.0.0,
// so that no two are neighbours (the kernel union merges neighbours with
// the same expiry into one prefix, which would make N blocks a handful of
// elements).
func ipN(i int) string {
	j := 2 * i
	return fmt.Sprintf("10.%d.%d.%d", 1+j>>16, (j>>8)&255, j&255)
}

func writeIPs(b *testing.B, n int) string {
	var sb strings.Builder
	for i := range n {
		sb.WriteString(ipN(i))
		sb.WriteByte('\n')
	}
	path := filepath.Join(b.TempDir(), "ips.txt")
	if err := os.WriteFile(path, []byte(sb.String()), 0o600); err != nil {
		b.Fatal(err)
	}
	return path
}

func percentile(ds []time.Duration, q float64) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[int(q*float64(len(s)-1))]
}

// BenchmarkBlockLatency: one block request over the socket until the
// kernel has it (parryd answers ok only after store fsync and netlink
// commit). Also measures a bare store commit (bbolt + fsync) in the same
// directory for comparison.
func BenchmarkBlockLatency(b *testing.B) {
	ns := netns.New(b)
	d := newDaemon(b, ns)
	d.Start()
	s := raw(b, d)
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := range b.N {
		req := `{"op":"block","targets":["` + ipN(i) + `"],"for":"1h"}` + "\n"
		t0 := time.Now()
		if err := s.send([]byte(req)); err != nil {
			b.Fatal(err)
		}
		resp, err := s.read()
		if err != nil || resp["ok"] != true {
			b.Fatalf("block: %v %v", resp, err)
		}
		lat = append(lat, time.Since(t0))
	}
	b.StopTimer()
	b.ReportMetric(float64(percentile(lat, 0.5).Microseconds()), "median-µs")
	b.ReportMetric(float64(percentile(lat, 0.99).Microseconds()), "p99-µs")
	netns.Eventually(b, 30*time.Second, "kernel dump shows every blocked element", func() bool {
		return len(kernelElems(b, ns, d.Table)) == b.N
	})

	// The fsync floor: one bbolt transaction with one block, same filesystem.
	st, err := store.Open(filepath.Join(b.TempDir(), "fsync.db"))
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	var commits []time.Duration
	for i := range min(b.N, 500) {
		t0 := time.Now()
		if err := st.Commit(store.Change{PutBlocks: []store.Block{{Prefix: mustPrefix(ipN(i)), Until: 1}}}); err != nil {
			b.Fatal(err)
		}
		commits = append(commits, time.Since(t0))
	}
	b.ReportMetric(float64(percentile(commits, 0.5).Microseconds()), "store-commit-median-µs")
	b.Logf("block over the socket: median %v p99 %v (n=%d); bare store commit (fsync): median %v",
		percentile(lat, 0.5), percentile(lat, 0.99), b.N, percentile(commits, 0.5))
}

// BenchmarkConcurrentBlocks: 10,000 separate block requests from 8
// clients, each with one request in flight (as a web app or a fleet peer
// sends them): total time and per-request latency.
func BenchmarkConcurrentBlocks(b *testing.B) {
	const clients, total = 8, 10_000
	for range b.N {
		ns := netns.New(b)
		d := daemon.New(b, ns, daemon.Options{Config: quietConfig + "control:\n  rate: 1000000\n  burst: 1000000\n"})
		d.Start()
		lat := make([][]time.Duration, clients)
		var wg sync.WaitGroup
		t0 := time.Now()
		for c := range clients {
			s := raw(b, d)
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := c; i < total; i += clients {
					req := `{"op":"block","targets":["` + ipN(i) + `"],"for":"1h"}` + "\n"
					t1 := time.Now()
					if err := s.send([]byte(req)); err != nil {
						b.Error(err)
						return
					}
					if resp, err := s.read(); err != nil || resp["ok"] != true {
						b.Errorf("block: %v %v", resp, err)
						return
					}
					lat[c] = append(lat[c], time.Since(t1))
				}
			}()
		}
		wg.Wait()
		took := time.Since(t0)
		var all []time.Duration
		for _, l := range lat {
			all = append(all, l...)
		}
		b.ReportMetric(float64(took.Milliseconds()), "total-ms")
		b.ReportMetric(float64(percentile(all, 0.5).Microseconds()), "median-µs")
		b.ReportMetric(float64(percentile(all, 0.99).Microseconds()), "p99-µs")
		b.Logf("%d blocks from %d clients: %v (%.0f/s), median %v, p99 %v", total, clients, took,
			float64(total)/took.Seconds(), percentile(all, 0.5), percentile(all, 0.99))
		d.Kill()
	}
}

// BenchmarkBlockFile100k: `parry block --file` with 100,000 IPs end to end
// (CLI process start to exit, all in the kernel), against `nft -f` loading
// the same 100,000 elements with timeouts into the same kind of set (a hash
// set with timeouts, like block4) in the same namespace.
func BenchmarkBlockFile100k(b *testing.B) {
	const n = 100_000
	file := writeIPs(b, n)
	nftFile := filepath.Join(b.TempDir(), "load.nft")
	var sb strings.Builder
	sb.WriteString("add table inet cmp\nadd set inet cmp s { type ipv4_addr; flags timeout; }\nadd element inet cmp s {")
	for i := range n {
		if i > 0 {
			sb.WriteByte(',')
		}
		sb.WriteString(ipN(i) + " timeout 1d")
	}
	sb.WriteString("}\n")
	os.WriteFile(nftFile, []byte(sb.String()), 0o600)
	var parryT, nftT []time.Duration
	ns := netns.New(b)
	for range b.N {
		d := newDaemon(b, ns)
		d.Start()
		t0 := time.Now()
		out := d.MustParry("block", "--file", file, "--for", "1d")
		parryT = append(parryT, time.Since(t0))
		if !strings.Contains(out, fmt.Sprintf("blocked %d targets", n)) {
			b.Fatalf("parry: %q", out)
		}
		t0 = time.Now()
		ns.MustRun(b, "nft", "-f", nftFile)
		nftT = append(nftT, time.Since(t0))
		netns.Eventually(b, 30*time.Second, "kernel dump shows all elements", func() bool {
			return len(kernelElems(b, ns, d.Table)) == n
		})
		b.ReportMetric(float64(rss(b, d)>>10), "RSS-at-ok-KiB")
		b.ReportMetric(float64(settledRSS(b, d.PID())>>10), "RSS-settled-KiB")
		d.Kill()
		ns.MustRun(b, "nft", "delete", "table", "inet", "cmp")
		ns.MustRun(b, "nft", "delete", "table", "inet", d.Table)
	}
	pm, nm := percentile(parryT, 0.5), percentile(nftT, 0.5)
	b.ReportMetric(float64(pm.Milliseconds()), "parry-ms")
	b.ReportMetric(float64(nm.Milliseconds()), "nft-f-ms")
	b.Logf("100k block --file: parry median %v, nft -f median %v (ratio %.2fx)", pm, nm, float64(pm)/float64(nm))
}

// BenchmarkStart100k: daemon start with 100,000 stored blocks, from exec to
// READY=1 (sent only after all blocks are in the kernel): with the table
// deleted while parryd was stopped, and with the table still there (a plain
// restart: parryd reads the kernel's elements to remove unknown ones).
func BenchmarkStart100k(b *testing.B) {
	const n = 100_000
	ns := netns.New(b)
	d := newDaemon(b, ns)
	d.Start()
	d.MustParry("block", "--file", writeIPs(b, n), "--for", "1d")
	d.Stop()
	for _, tableGone := range []bool{true, false} {
		name := "table-deleted"
		if !tableGone {
			name = "table-present"
		}
		b.Run(name, func(b *testing.B) {
			var ts []time.Duration
			for range b.N {
				if tableGone {
					ns.MustRun(b, "nft", "delete", "table", "inet", d.Table)
				}
				sweeps := strings.Count(readFile(b, d.AuditPath()), `"reason":"sweep"`)
				// A daemon of this sub-benchmark on the state prepared above.
				r := daemon.New(b, ns, daemon.Options{Config: quietConfig, StateDir: d.StateDir, ReadyTimeout: 60 * time.Second})
				r.Start()
				ts = append(ts, r.ReadyAfter())
				// At READY every element is committed: check with exact
				// lookups (nft get element) on a spread of addresses. A full
				// dump right now can come back short while the kernel grows
				// the hash table in the background (its walk skips entries
				// during a resize, lookups do not), so the full count is
				// polled afterwards.
				var sample []string
				for i := 0; i < n; i += n / 200 {
					sample = append(sample, ipN(i))
				}
				if out, err := ns.Run("nft", "get", "element", "inet", d.Table, "block4", "{ "+strings.Join(sample, ", ")+" }"); err != nil {
					b.Fatalf("sampled elements missing from the kernel at READY: %v\n%s\n%s", err, out, r.Log())
				}
				netns.Eventually(b, 20*time.Second, "all elements in a full kernel dump", func() bool {
					return len(kernelElems(b, ns, d.Table)) == n
				})
				if !tableGone { // RSS after the sweep of unknown elements, which dumps the 100k sets
					netns.Eventually(b, 60*time.Second, "sweep done", func() bool {
						return strings.Count(readFile(b, d.AuditPath()), `"reason":"sweep"`) > sweeps
					})
				}
				b.ReportMetric(float64(settledRSS(b, r.PID())>>10), "RSS-settled-KiB")
				r.Stop()
			}
			b.ReportMetric(float64(percentile(ts, 0.5).Milliseconds()), "start-to-ready-ms")
			b.Logf("start with %d stored blocks, %s, to READY=1: median %v", n, name, percentile(ts, 0.5))
		})
	}
}

// settledRSS is the lowest RSS seen within 3 s: parryd returns the
// buffers of a bulk change to the OS on its next maintenance tick (1 s).
func settledRSS(b *testing.B, pid int) int64 {
	low := rssPID(b, pid)
	netns.Poll(3*time.Second, 100*time.Millisecond, func() bool { // sampling: runs to the end
		low = min(low, rssPID(b, pid))
		return false
	})
	return low
}

func rss(b *testing.B, d *daemon.Daemon) int64 { return rssPID(b, d.PID()) }

// rssPID reads VmRSS in bytes.
func rssPID(b *testing.B, pid int) int64 {
	s, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		b.Fatal(err)
	}
	for _, l := range strings.Split(string(s), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmRSS:" {
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			return kb << 10
		}
	}
	b.Fatal("no VmRSS")
	return 0
}

func mustPrefix(s string) netip.Prefix { return netip.PrefixFrom(netip.MustParseAddr(s), 32) }

func readFile(b testing.TB, path string) string {
	s, err := os.ReadFile(path)
	if err != nil {
		b.Fatal(err)
	}
	return string(s)
}
