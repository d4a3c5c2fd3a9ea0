package union

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"runtime"
	"testing"
)

// feedBlocks makes n blocks shaped like blocklist feeds: mostly single IPv4
// addresses, some /24-/28 and /16-/20 prefixes, a few IPv6 /64s, a fifth of
// them overlapping an earlier block (inside it, around it or equal), most
// expiring within a day, 5% permanent, 10% scoped (scope 1: a port).
func feedBlocks(n int, rng *rand.Rand) []Block[int] { return feedMix(n, 5, 15, rng) }

// feedMix is feedBlocks with wide% /16-/20 and mid% /24-/28 prefixes.
func feedMix(n, wide, mid int, rng *rand.Rand) []Block[int] {
	out := make([]Block[int], 0, n)
	random := func() netip.Prefix {
		var b [4]byte
		for i := range b {
			b[i] = byte(rng.IntN(256))
		}
		bits := 32
		switch r := rng.IntN(100); {
		case r < wide:
			bits = 16 + rng.IntN(5)
		case r < wide+mid:
			bits = 24 + rng.IntN(5)
		case r < wide+mid+5:
			var b6 [16]byte
			b6[0], b6[1], b6[2], b6[3] = 0x20, 0x01, 0x0d, 0xb8
			for i := 4; i < 8; i++ {
				b6[i] = byte(rng.IntN(256))
			}
			return netip.PrefixFrom(netip.AddrFrom16(b6), 64)
		}
		return netip.PrefixFrom(netip.AddrFrom4(b), bits).Masked()
	}
	for range n {
		p := random()
		if len(out) > 0 && rng.IntN(5) == 0 { // overlap an earlier block
			q := out[rng.IntN(len(out))].Prefix
			bits := max(0, min(q.Addr().BitLen(), q.Bits()+rng.IntN(9)-4))
			p = netip.PrefixFrom(q.Addr(), bits).Masked()
		}
		exp := t0 + rng.Int64N(day)
		if rng.IntN(20) == 0 {
			exp = 0
		}
		scope := 0
		if rng.IntN(10) == 0 {
			scope = 1
		}
		out = append(out, Block[int]{Prefix: p, Scope: scope, Expiry: exp})
	}
	return out
}

func heapInUse() uint64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

// BenchmarkBuild is a full build: n logical blocks added to an empty
// union, then every piece read (what a start-up re-assert sends). It
// reports the heap the union holds per logical block. "mixed" is
// feedBlocks; "addresses" has 0.2% /16-/20 and 1% /24-/28 prefixes.
func BenchmarkBuild(b *testing.B) {
	for _, tc := range []struct {
		name      string
		wide, mid int
		n         int
	}{{"mixed", 5, 15, 100_000}, {"mixed", 5, 15, 1_000_000}, {"addresses", 0, 1, 1_000_000}} {
		n := tc.n
		blocks := feedMix(n, tc.wide, tc.mid, rand.New(rand.NewPCG(1, 2)))
		b.Run(fmt.Sprintf("%s/%d", tc.name, n), func(b *testing.B) {
			var pieces int
			var held uint64
			for b.Loop() {
				b.StopTimer()
				base := heapInUse()
				b.StartTimer()
				u := New[int, int]()
				for i, bl := range blocks {
					if err := u.Add(i, bl); err != nil {
						b.Fatal(err)
					}
				}
				pieces = len(u.Pieces())
				b.StopTimer()
				held = heapInUse() - base
				runtime.KeepAlive(u)
				b.StartTimer()
			}
			b.ReportMetric(float64(pieces), "pieces")
			b.ReportMetric(float64(held)/float64(n), "heapB/block")
			b.ReportMetric(float64(held)/(1<<20), "heapMiB")
		})
	}
}

// BenchmarkChange1pct is a feed refresh with 1% changed: 0.5% of the
// blocks removed and as many new ones added, then the kernel diff read.
func BenchmarkChange1pct(b *testing.B) {
	for _, n := range []int{100_000, 1_000_000} {
		rng := rand.New(rand.NewPCG(3, 4))
		blocks := feedBlocks(n, rng)
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			u := New[int, int]()
			for i, bl := range blocks {
				if err := u.Add(i, bl); err != nil {
					b.Fatal(err)
				}
			}
			u.Pieces()
			ids := make([]int, n)
			for i := range ids {
				ids[i] = i
			}
			cur := append([]Block[int](nil), blocks...)
			next := n
			var diff int
			for b.Loop() {
				fresh := feedBlocks(n/200, rng)
				for k := range n / 200 {
					i := rng.IntN(n)
					u.Remove(ids[i], cur[i])
					ids[i], cur[i] = next, fresh[k]
					if err := u.Add(next, fresh[k]); err != nil {
						b.Fatal(err)
					}
					next++
				}
				d := u.Changes()
				diff = len(d.Add) + len(d.Del) + len(d.Retime)
			}
			b.ReportMetric(float64(diff), "diff-elems")
		})
	}
}

// BenchmarkChangeOne is one `parry block` against a union of 1,000,000
// blocks: one block added and its kernel diff read, then removed again.
func BenchmarkChangeOne(b *testing.B) {
	rng := rand.New(rand.NewPCG(5, 6))
	u := New[int, int]()
	for i, bl := range feedBlocks(1_000_000, rng) {
		if err := u.Add(i, bl); err != nil {
			b.Fatal(err)
		}
	}
	u.Pieces()
	extra := feedBlocks(1000, rng)
	i := 0
	for b.Loop() {
		bl := extra[i%len(extra)]
		if err := u.Add(-1, bl); err != nil {
			b.Fatal(err)
		}
		u.Changes()
		u.Remove(-1, bl)
		u.Changes()
		i++
	}
}
