package firewall_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/parryhq/parry/firewall"
	"github.com/parryhq/parry/firewall/union"
	"github.com/parryhq/parry/test/netns"
	"golang.org/x/sys/unix"
)

// benchSets are the inputs of the Block benchmarks: 100,000 elements of
// one kind each, all with a 1h timeout.
func benchSets() []struct {
	name, set string
	elems     []firewall.Element
} {
	single4 := v4Elements(100_000, 0)
	var cidr4, single6 []firewall.Element
	for i := range 100_000 {
		a := netip.AddrFrom4([4]byte{10, byte(i >> 12), byte(i >> 4), byte(i << 4)})
		cidr4 = append(cidr4, firewall.Element{Prefix: netip.PrefixFrom(a, 28), Timeout: time.Hour})
		a6 := netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 15: byte(i), 14: byte(i >> 8), 13: byte(i >> 16)})
		single6 = append(single6, firewall.Element{Prefix: netip.PrefixFrom(a6, 128), Timeout: time.Hour})
	}
	scoped := func(els []firewall.Element, proto uint8, port uint16, a firewall.Action) []firewall.Element {
		out := make([]firewall.Element, len(els))
		for i, e := range els {
			e.Proto, e.Port, e.Action = proto, port, a
			out[i] = e
		}
		return out
	}
	return []struct {
		name, set string
		elems     []firewall.Element
	}{
		{"ipv4-addr", "block4", single4},
		{"ipv4-cidr", "block4net", cidr4},
		{"ipv6-addr", "block6", single6},
		{"ipv4-addr-reject", "reject4", scoped(single4, 0, 0, firewall.Reject)},
		{"ipv4-addr-tcp22", "block4port", scoped(single4, unix.IPPROTO_TCP, 22, firewall.Drop)},
		{"ipv4-cidr-tcp22", "block4port", scoped(cidr4, unix.IPPROTO_TCP, 22, firewall.Drop)},
		{"ipv6-addr-tcp22-reject", "reject6port", scoped(single6, unix.IPPROTO_TCP, 22, firewall.Reject)},
		{"ipv4-addr-udp", "block4proto", scoped(single4, unix.IPPROTO_UDP, 0, firewall.Drop)},
	}
}

// BenchmarkBlock100k compares Block with `nft -f` loading the same 100,000
// elements into the same set of a fresh table, in the same namespace and
// run. Table creation is outside the timed region for both.
func BenchmarkBlock100k(b *testing.B) {
	ns := netns.New(b)
	f, err := firewall.New(ns.Conn(b, firewall.ConnOptions()...), firewall.Config{Table: "bench"})
	if err != nil {
		b.Fatal(err)
	}
	fresh := func() {
		b.Helper()
		if err := f.Remove(); err != nil {
			b.Fatal(err)
		}
		if err := f.Ensure(); err != nil {
			b.Fatal(err)
		}
	}
	for _, bs := range benchSets() {
		b.Run(bs.name+"/parry", func(b *testing.B) {
			for b.Loop() {
				b.StopTimer()
				fresh()
				b.StartTimer()
				if err := f.Block(bs.elems); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(len(bs.elems))*float64(b.N)/b.Elapsed().Seconds(), "elems/s")
		})
		b.Run(bs.name+"/nft-f", func(b *testing.B) {
			file := nftFile(b, bs.set, bs.elems)
			for b.Loop() {
				b.StopTimer()
				fresh()
				b.StartTimer()
				if out, err := ns.Run("nft", "-f", file); err != nil {
					b.Fatalf("nft -f: %v: %s", err, out)
				}
			}
			b.ReportMetric(float64(len(bs.elems))*float64(b.N)/b.Elapsed().Seconds(), "elems/s")
		})
	}
	// The layout decision: the same 100,000 single addresses into the
	// interval set instead of the hash set (nft -f, as parry never does it).
	b.Run("ipv4-addr-into-interval-set/nft-f", func(b *testing.B) {
		file := nftFile(b, "block4net", v4Elements(100_000, 0))
		for b.Loop() {
			b.StopTimer()
			fresh()
			b.StartTimer()
			if out, err := ns.Run("nft", "-f", file); err != nil {
				b.Fatalf("nft -f: %v: %s", err, out)
			}
		}
		b.ReportMetric(100_000*float64(b.N)/b.Elapsed().Seconds(), "elems/s")
	})
	// Re-asserting 100,000 elements that are already there (after a
	// restart or a Watch callback): every element's timeout is replaced.
	b.Run("ipv4-addr-reassert/parry", func(b *testing.B) {
		els := v4Elements(100_000, 0)
		fresh()
		if err := f.Block(els); err != nil {
			b.Fatal(err)
		}
		for b.Loop() {
			if err := f.Block(els); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(100_000*float64(b.N)/b.Elapsed().Seconds(), "elems/s")
	})
	// The same on a kernel older than 6.10, where Block sends add+delete+add.
	b.Run("ipv4-addr-reassert-delete+add/parry", func(b *testing.B) {
		g, err := firewall.New(ns.Conn(b, firewall.ConnOptions()...), firewall.Config{Table: "bench"})
		if err != nil {
			b.Fatal(err)
		}
		firewall.UseDeleteAdd(g)
		els := v4Elements(100_000, 0)
		fresh()
		if err := g.Block(els); err != nil {
			b.Fatal(err)
		}
		for b.Loop() {
			if err := g.Block(els); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(100_000*float64(b.N)/b.Elapsed().Seconds(), "elems/s")
	})
}

// nftFile writes an `nft -f` script adding elems to set with a 1h timeout.
func nftFile(b *testing.B, set string, elems []firewall.Element) string {
	b.Helper()
	file := filepath.Join(b.TempDir(), "elements.nft")
	var sb strings.Builder
	fmt.Fprintf(&sb, "add element inet bench %s {\n", set)
	for _, e := range elems {
		p := e.Prefix.String()
		if e.Prefix.IsSingleIP() && set != "block4net" {
			p = e.Prefix.Addr().String()
		}
		if e.Proto != 0 {
			p += " . " + map[uint8]string{unix.IPPROTO_TCP: "tcp", unix.IPPROTO_UDP: "udp"}[e.Proto]
		}
		if e.Port != 0 {
			p += fmt.Sprintf(" . %d", e.Port)
		}
		fmt.Fprintf(&sb, "%s timeout 1h,\n", p)
	}
	sb.WriteString("}\n")
	if err := os.WriteFile(file, []byte(sb.String()), 0o600); err != nil {
		b.Fatal(err)
	}
	return file
}

// BenchmarkElements100k reads back 100,000 IPv4 addresses: parry's
// Elements (dump read with a 64 KiB buffer) against google/nftables'
// GetSetElements (a page at a time) on the same set.
func BenchmarkElements100k(b *testing.B) {
	ns := netns.New(b)
	c := ns.Conn(b, firewall.ConnOptions()...)
	f, err := firewall.New(c, firewall.Config{Table: "bench"})
	if err != nil {
		b.Fatal(err)
	}
	if err := f.Ensure(); err != nil {
		b.Fatal(err)
	}
	if err := f.Block(v4Elements(100_000, 0)); err != nil {
		b.Fatal(err)
	}
	b.Run("parry", func(b *testing.B) {
		for b.Loop() {
			if els, err := f.Elements(); err != nil || len(els) != 100_000 {
				b.Fatalf("Elements = %d, %v", len(els), err)
			}
		}
	})
	b.Run("google-nftables", func(b *testing.B) {
		set, err := c.GetSetByName(&nftables.Table{Name: "bench", Family: nftables.TableFamilyINet}, "block4")
		if err != nil {
			b.Fatal(err)
		}
		for b.Loop() {
			if els, err := c.GetSetElements(set); err != nil || len(els) != 100_000 {
				b.Fatalf("GetSetElements = %d, %v", len(els), err)
			}
		}
	})
}

// BenchmarkBlockOneWatch is the cost of the generation accounting: Block of
// one address with and without Watch running (which adds two GETGEN round
// trips to every transaction), alternating in the same namespace.
func BenchmarkBlockOneWatch(b *testing.B) {
	ns := netns.New(b)
	f, err := firewall.New(ns.Conn(b, firewall.ConnOptions()...), firewall.Config{Table: "bench"})
	if err != nil {
		b.Fatal(err)
	}
	if err := f.Ensure(); err != nil {
		b.Fatal(err)
	}
	elem := []firewall.Element{{Prefix: netip.MustParsePrefix("203.0.113.8/32"), Timeout: time.Hour}}
	b.Run("unwatched", func(b *testing.B) {
		for b.Loop() {
			if err := f.Block(elem); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("watched", func(b *testing.B) {
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- f.Watch(ctx, func() {}, func() {}) }()
		defer func() {
			cancel()
			if err := <-done; err != nil {
				b.Error(err)
			}
		}()
		for b.Loop() {
			if err := f.Block(elem); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkBlockOne is the latency of Block with one element of each kind
// (plain, reject, port-scoped, protocol-scoped), into sets that are empty
// and into sets that already hold 100,000 elements of that kind, in the
// same namespace and run.
func BenchmarkBlockOne(b *testing.B) {
	ns := netns.New(b)
	f, err := firewall.New(ns.Conn(b, firewall.ConnOptions()...), firewall.Config{Table: "bench"})
	if err != nil {
		b.Fatal(err)
	}
	if err := f.Ensure(); err != nil {
		b.Fatal(err)
	}
	one := netip.MustParsePrefix("203.0.113.8/32")
	kinds := []struct {
		name string
		elem firewall.Element
	}{
		{"plain", firewall.Element{Prefix: one, Timeout: time.Hour}},
		{"reject", firewall.Element{Prefix: one, Action: firewall.Reject, Timeout: time.Hour}},
		{"tcp22", firewall.Element{Prefix: one, Proto: unix.IPPROTO_TCP, Port: 22, Timeout: time.Hour}},
		{"tcp22-reject", firewall.Element{Prefix: one, Proto: unix.IPPROTO_TCP, Port: 22, Action: firewall.Reject, Timeout: time.Hour}},
		{"udp", firewall.Element{Prefix: one, Proto: unix.IPPROTO_UDP, Timeout: time.Hour}},
		{"cidr", firewall.Element{Prefix: netip.MustParsePrefix("203.0.113.0/28"), Timeout: time.Hour}},
		{"cidr-tcp22", firewall.Element{Prefix: netip.MustParsePrefix("203.0.113.0/28"), Proto: unix.IPPROTO_TCP, Port: 22, Timeout: time.Hour}},
	}
	for _, fill := range []int{0, 100_000} {
		for _, k := range kinds {
			b.Run(fmt.Sprintf("%s/set%d", k.name, fill), func(b *testing.B) {
				if fill > 0 {
					b.StopTimer()
					if err := f.Remove(); err != nil {
						b.Fatal(err)
					}
					if err := f.Ensure(); err != nil {
						b.Fatal(err)
					}
					els := v4Elements(fill, 0)
					for i := range els {
						els[i].Proto, els[i].Port, els[i].Action = k.elem.Proto, k.elem.Port, k.elem.Action
						if !k.elem.Prefix.IsSingleIP() {
							els[i].Prefix = netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i >> 12), byte(i >> 4), byte(i << 4)}), 28)
						}
					}
					if err := f.Block(els); err != nil {
						b.Fatal(err)
					}
					b.StartTimer()
				}
				for b.Loop() {
					if err := f.Block([]firewall.Element{k.elem}); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}

// feedPrefixes makes n feed entries: 85% single IPv4 addresses, 15%
// /24-/28 prefixes, a fifth of all of them inside, around or equal to an
// earlier entry (overlap).
func feedPrefixes(n int, rng *rand.Rand) []netip.Prefix {
	out := make([]netip.Prefix, 0, n)
	for range n {
		a := netip.AddrFrom4([4]byte{byte(1 + rng.IntN(222)), byte(rng.IntN(256)), byte(rng.IntN(256)), byte(rng.IntN(256))})
		p := netip.PrefixFrom(a, 32)
		if rng.IntN(100) < 15 {
			p = netip.PrefixFrom(a, 24+rng.IntN(5)).Masked()
		}
		if len(out) > 0 && rng.IntN(5) == 0 {
			q := out[rng.IntN(len(out))]
			p = netip.PrefixFrom(q.Addr(), max(16, min(32, q.Bits()+rng.IntN(9)-4))).Masked()
		}
		out = append(out, p)
	}
	return out
}

// BenchmarkFeed100k is issue 14's feed figure: 100,000 entries with 20%
// overlap through firewall/union into the kernel with Apply (first load),
// then a refresh with 1% of the entries replaced (the union's diff, one
// Apply), beside `nft -f` loading the same union (the first load's pieces)
// into the same sets. Entries expire in 1h (first load) and 2h (refresh:
// every kept entry is renewed, so every piece is re-timed).
func BenchmarkFeed100k(b *testing.B) {
	ns := netns.New(b)
	f, err := firewall.New(ns.Conn(b, firewall.ConnOptions()...), firewall.Config{Table: "bench"})
	if err != nil {
		b.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(14, 1))
	entries := feedPrefixes(100_000, rng)
	fresh := func() {
		b.Helper()
		if err := f.Remove(); err != nil {
			b.Fatal(err)
		}
		if err := f.Ensure(); err != nil {
			b.Fatal(err)
		}
	}
	toElements := func(ps []union.Piece[firewall.Scope], now time.Time) []firewall.Element {
		out := make([]firewall.Element, 0, len(ps))
		for _, p := range ps {
			out = append(out, p.Scope.Element(p.Prefix, time.UnixMilli(p.Expiry).Sub(now)))
		}
		return out
	}
	load := func(now time.Time) (*union.Union[int, firewall.Scope], []union.Piece[firewall.Scope]) {
		u := union.New[int, firewall.Scope]()
		for i, p := range entries {
			if err := u.Add(i, union.Block[firewall.Scope]{Prefix: p, Expiry: now.Add(time.Hour).UnixMilli()}); err != nil {
				b.Fatal(err)
			}
		}
		return u, u.Pieces()
	}
	var pieces int
	b.Run("first-load/parry", func(b *testing.B) {
		for b.Loop() {
			b.StopTimer()
			fresh()
			b.StartTimer()
			now := time.Now()
			_, ps := load(now)
			pieces = len(ps)
			if err := f.Apply(nil, toElements(ps, now)); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(pieces), "pieces")
	})
	b.Run("first-load/nft-f", func(b *testing.B) {
		now := time.Now()
		_, ps := load(now)
		var single, nets []firewall.Element
		for _, e := range toElements(ps, now) {
			if e.Prefix.IsSingleIP() {
				single = append(single, e)
			} else {
				nets = append(nets, e)
			}
		}
		files := []string{nftFile(b, "block4", single), nftFile(b, "block4net", nets)}
		for b.Loop() {
			b.StopTimer()
			fresh()
			b.StartTimer()
			for _, file := range files {
				if out, err := ns.Run("nft", "-f", file); err != nil {
					b.Fatalf("nft -f: %v: %s", err, out)
				}
			}
		}
	})
	b.Run("refresh-1pct/parry", func(b *testing.B) {
		var diff int
		for b.Loop() {
			b.StopTimer()
			fresh()
			now := time.Now()
			u, ps := load(now)
			if err := f.Apply(nil, toElements(ps, now)); err != nil {
				b.Fatal(err)
			}
			changed := feedPrefixes(1_000, rng)
			b.StartTimer()
			// The refresh: 1% replaced, every kept entry renewed.
			later := now.Add(time.Minute)
			exp := later.Add(2 * time.Hour).UnixMilli()
			for i, p := range entries {
				if i < len(changed) {
					u.Remove(i, union.Block[firewall.Scope]{Prefix: p, Expiry: now.Add(time.Hour).UnixMilli()})
					p = changed[i]
					i += len(entries)
				}
				if err := u.Add(i, union.Block[firewall.Scope]{Prefix: p, Expiry: exp}); err != nil {
					b.Fatal(err)
				}
			}
			d := u.Changes()
			diff = len(d.Add) + len(d.Del) + len(d.Retime)
			if err := f.Apply(toElements(d.Del, later), toElements(append(d.Add, d.Retime...), later)); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(diff), "diff-elems")
	})
}
