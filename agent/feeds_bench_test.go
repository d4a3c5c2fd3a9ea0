package agent

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/parryhq/parry/agent/enforce"
	"github.com/parryhq/parry/agent/feed"
	"github.com/parryhq/parry/firewall"
	"github.com/parryhq/parry/test/netns"
)

// feedText is a feed of n lines: mostly single addresses, 15% /24../28,
// and 20% of them inside or around an earlier entry (the overlap the feed
// normalises away: covered entries dropped).
func feedText(n int, rng *rand.Rand) string {
	var sb strings.Builder
	var out []netip.Prefix
	for range n {
		a := netip.AddrFrom4([4]byte{byte(1 + rng.IntN(125)), byte(rng.IntN(256)), byte(rng.IntN(256)), byte(rng.IntN(256))})
		p := netip.PrefixFrom(a, 32)
		if rng.IntN(100) < 15 {
			p = netip.PrefixFrom(a, 24+rng.IntN(5)).Masked()
		}
		if len(out) > 0 && rng.IntN(5) == 0 {
			q := out[rng.IntN(len(out))]
			p = netip.PrefixFrom(q.Addr(), max(16, min(32, q.Bits()+rng.IntN(9)-4))).Masked()
		}
		out = append(out, p)
		sb.WriteString(p.String())
		sb.WriteByte('\n')
	}
	return sb.String()
}

func parseFeed(b *testing.B, text string) *feed.Set {
	s, _, err := feed.Parse(strings.NewReader(text), feed.Limits{MinPrefixV4: 8, MinPrefixV6: 32})
	if err != nil {
		b.Fatal(err)
	}
	return s
}

// BenchmarkFeedApply100k is issue 14's feed figure through the daemon's
// decision path into a real kernel (a throwaway namespace): a feed of
// 100,000 lines with 20% overlap parsed and applied (first load: store,
// kernel, audit in one transaction), then a refresh with 1% of the lines
// changed (parse, diff, apply: added, lifted, every kept entry renewed),
// beside `nft -f` loading the same elements as the first load into a
// fresh table of the same layout, in the same run.
func BenchmarkFeedApply100k(b *testing.B) {
	ns := netns.New(b)
	rng := rand.New(rand.NewPCG(14, 1))
	text := feedText(100_000, rng)
	lines := strings.Split(strings.TrimSpace(text), "\n")
	for i := range 1000 { // 1% changed
		lines[rng.IntN(len(lines))] = fmt.Sprintf("126.%d.%d.%d", i>>8, i&255, rng.IntN(256))
	}
	text2 := strings.Join(lines, "\n") + "\n"
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	var nftText string
	var entries, diff int
	var refused int
	newPath := func(b *testing.B) (*Daemon, *firewall.NFT) {
		fw, err := firewall.New(ns.Conn(b, firewall.ConnOptions()...), firewall.Config{Table: fmt.Sprintf("pf%d", time.Now().UnixNano()%100000)})
		if err != nil {
			b.Fatal(err)
		}
		cfg := DefaultConfig()
		cfg.StateDir = b.TempDir()
		cfg.Socket = cfg.StateDir + "/s.sock"
		cfg.Validate()
		d, err := New(cfg, Options{Firewall: fw, Logger: quiet, HostAddrs: func() ([]netip.Addr, error) { return nil, nil }})
		if err != nil {
			b.Fatal(err)
		}
		if err := d.heal.Reconcile("bench"); err != nil {
			b.Fatal(err)
		}
		return d, fw
	}
	apply := func(b *testing.B, d *Daemon, old, s *feed.Set, until time.Time) enforce.FeedOutcome {
		df := feed.Compare(old, s)
		fc := enforce.FeedChange{Feed: "bench", Until: until, Lift: df.Removed.Prefixes()}
		fc.Block = append(df.Added.Prefixes(), df.Kept.Prefixes()...)
		out, err := d.path.ApplyFeed(context.Background(), fc)
		if err != nil {
			b.Fatal(err)
		}
		diff = df.Added.Len() + df.Removed.Len()
		return out
	}
	b.Run("first-load/parry", func(b *testing.B) {
		for b.Loop() {
			b.StopTimer()
			d, fw := newPath(b)
			b.StartTimer()
			s := parseFeed(b, text)
			out := apply(b, d, nil, s, time.Now().Add(time.Hour))
			b.StopTimer()
			entries, refused = s.Len(), out.RefusedTotal()
			if nftText == "" {
				nftText = nftScript(s)
			}
			fw.Remove()
			d.Close()
			b.StartTimer()
		}
		b.ReportMetric(float64(entries), "entries")
		b.ReportMetric(float64(refused), "refused")
	})
	b.Run("first-load/nft-f", func(b *testing.B) {
		for b.Loop() {
			b.StopTimer()
			_, fw := newPath(b)
			file := filepath.Join(b.TempDir(), "feed.nft")
			if err := os.WriteFile(file, []byte(strings.ReplaceAll(nftText, "TABLE", fw.Table())), 0o600); err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
			if out, err := ns.Run("nft", "-f", file); err != nil {
				b.Fatalf("nft -f: %v: %s", err, out)
			}
			b.StopTimer()
			fw.Remove()
			b.StartTimer()
		}
	})
	b.Run("refresh-1pct/parry", func(b *testing.B) {
		for b.Loop() {
			b.StopTimer()
			d, fw := newPath(b)
			s1 := parseFeed(b, text)
			apply(b, d, nil, s1, time.Now().Add(time.Hour))
			b.StartTimer()
			s2 := parseFeed(b, text2)
			out := apply(b, d, s1, s2, time.Now().Add(2*time.Hour))
			b.StopTimer()
			refused = out.RefusedTotal()
			fw.Remove()
			d.Close()
			b.StartTimer()
		}
		b.ReportMetric(float64(diff), "diff-entries")
		b.ReportMetric(float64(refused), "refused")
	})
}

// nftScript is an nft script adding s's entries to table TABLE's block
// sets (TABLE replaced by the caller), with a 1h timeout.
func nftScript(s *feed.Set) string {
	var single, nets strings.Builder
	for p := range s.All() {
		if p.IsSingleIP() {
			fmt.Fprintf(&single, "%s timeout 1h,\n", p.Addr())
		} else {
			fmt.Fprintf(&nets, "%s timeout 1h,\n", p)
		}
	}
	return "add element inet TABLE block4 {\n" + single.String() + "}\nadd element inet TABLE block4net {\n" + nets.String() + "}\n"
}
