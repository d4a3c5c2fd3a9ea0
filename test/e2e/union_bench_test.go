package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/parryhq/parry/test/daemon"
	"github.com/parryhq/parry/test/netns"
)

// BenchmarkUnionStart: the cost of the kernel union inside parryd. A file
// feed of N entries (95% single addresses, 5% /24s laid over the same
// range, so a fifth of the addresses sit inside a /24 of the feed) and an
// admin's block of N/10 of the same addresses for longer (each splits the
// /24 around it): first load (start to the feed applied), then a restart
// with the table present (start to READY=1, which follows the re-assert of
// the union's pieces), and parryd's settled RSS after each.
//
//	go test ./test/e2e -run '^$' -bench UnionStart -benchtime 1x
func BenchmarkUnionStart(b *testing.B) {
	for _, n := range []int{100_000, 1_000_000} {
		b.Run(fmt.Sprintf("blocks=%d", n+n/10), func(b *testing.B) {
			var feed, admin strings.Builder
			addrs := n * 95 / 100
			for i := range addrs {
				feed.WriteString(ipN(i))
				feed.WriteByte('\n')
			}
			for i := range n - addrs { // /24s over the addresses' range: 10.1.0.0 on, every 4th /24
				j := 4 * i
				fmt.Fprintf(&feed, "10.%d.%d.0/24\n", 1+j>>8, j&255)
			}
			for i := 0; i < addrs; i += 10 {
				admin.WriteString(ipN(i))
				admin.WriteByte('\n')
			}
			dir := b.TempDir()
			feedFile, adminFile := filepath.Join(dir, "feed.netset"), filepath.Join(dir, "admin.txt")
			if err := os.WriteFile(feedFile, []byte(feed.String()), 0o600); err != nil {
				b.Fatal(err)
			}
			if err := os.WriteFile(adminFile, []byte(admin.String()), 0o600); err != nil {
				b.Fatal(err)
			}
			cfg := quietConfig + "feeds:\n  - name: big\n    path: " + feedFile + "\n    max_size: 64MiB\n    for: 1d\n"
			for b.Loop() {
				ns := netns.New(b)
				d := daemon.New(b, ns, daemon.Options{Config: cfg, ReadyTimeout: 120 * time.Second})
				start := time.Now()
				d.Start()
				var loaded time.Duration
				if !netns.Poll(300*time.Second, 100*time.Millisecond, func() bool {
					out, _, _ := d.Parry("feed", "list", "--json")
					if strings.Contains(out, `"last_apply"`) {
						loaded = time.Since(start)
						return true
					}
					return false
				}) {
					b.Fatal("the feed did not load within 300s")
				}
				t0 := time.Now()
				d.MustParry("block", "--file", adminFile, "--for", "2d")
				adminTook := time.Since(t0)
				rss1 := settledRSS(b, d.PID())
				pieces := len(kernelElems(b, ns, d.Table))
				d.Stop()
				r := daemon.New(b, ns, daemon.Options{Config: cfg, StateDir: d.StateDir, ReadyTimeout: 120 * time.Second})
				r.Start()
				ready := r.ReadyAfter()
				rss2 := settledRSS(b, r.PID())
				r.Stop()
				b.ReportMetric(loaded.Seconds(), "first-load-s")
				b.ReportMetric(adminTook.Seconds(), "admin-block-file-s")
				b.ReportMetric(float64(rss1)/(1<<20), "RSS-loaded-MiB")
				b.ReportMetric(ready.Seconds(), "restart-to-ready-s")
				b.ReportMetric(float64(rss2)/(1<<20), "RSS-restarted-MiB")
				b.ReportMetric(float64(pieces), "kernel-pieces")
				b.Logf("%d logical blocks: first load %v, admin block --file of %d %v, RSS %.0f MiB; restart to READY %v, RSS %.0f MiB; %d kernel pieces",
					n+addrs/10, loaded, addrs/10, adminTook, float64(rss1)/(1<<20), ready, float64(rss2)/(1<<20), pieces)
			}
		})
	}
}
