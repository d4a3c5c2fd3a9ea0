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

// BenchmarkFeedRSS1M: parryd (a real process in a throwaway namespace)
// with one file feed of 1,000,000 entries (950,000 addresses, 50,000 /24s
// apart from them) loaded into the store and the kernel; it reports the
// first load's time and parryd's RSS once the blocks are in force (the
// lowest within 3 s: settledRSS).
//
//	go test ./test/e2e -run '^$' -bench FeedRSS1M -benchtime 1x
func BenchmarkFeedRSS1M(b *testing.B) {
	var sb strings.Builder
	for i := range 950_000 {
		sb.WriteString(ipN(i))
		sb.WriteByte('\n')
	}
	for i := range 50_000 {
		fmt.Fprintf(&sb, "172.%d.%d.0/24\n", 16+i>>8, i&255)
	}
	file := filepath.Join(b.TempDir(), "big.netset")
	if err := os.WriteFile(file, []byte(sb.String()), 0o600); err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		ns := netns.New(b)
		d := daemon.New(b, ns, daemon.Options{Config: quietConfig + "feeds:\n  - name: big\n    path: " + file +
			"\n    max_size: 64MiB\n", ReadyTimeout: 120 * time.Second})
		start := time.Now()
		d.Start()
		var took time.Duration
		ok := netns.Poll(300*time.Second, 100*time.Millisecond, func() bool {
			out, _, _ := d.Parry("feed", "list", "--json")
			if strings.Contains(out, `"last_apply"`) {
				took = time.Since(start)
				return true
			}
			return false
		})
		if !ok {
			b.Fatal("the 1M feed did not load within 300s")
		}
		out, _, _ := d.Parry("feed", "list")
		if !strings.Contains(out, "1000000 added") {
			b.Fatalf("feed list:\n%s", out)
		}
		low := settledRSS(b, d.PID())
		b.ReportMetric(took.Seconds(), "start-to-loaded-s")
		b.ReportMetric(float64(low)/(1<<20), "RSS-MiB")
		if st, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", d.PID())); err == nil {
			for l := range strings.Lines(string(st)) {
				if strings.HasPrefix(l, "RssAnon") || strings.HasPrefix(l, "RssFile") {
					b.Log(strings.Join(strings.Fields(l), " "))
				}
			}
		}
		d.Stop()
	}
}
