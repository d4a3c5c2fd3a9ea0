package feed

import (
	"bytes"
	"fmt"
	"net/netip"
	"runtime"
	"testing"
)

// synth writes a feed of n lines with 20 % overlap: 80 % distinct entries
// (mostly IPv4 /32, some /24, a few IPv6 /64), 10 % exact repeats of them
// and 10 % addresses inside their /24s. seed changes which entries; shift
// > 0 replaces that fraction of the distinct entries (a refresh).
func synth(n int, seed uint64, changed float64) []byte {
	x := seed
	next := func() uint64 { // splitmix64
		x += 0x9e3779b97f4a7c15
		z := x
		z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
		z = (z ^ (z >> 27)) * 0x94d049bb133111eb
		return z ^ (z >> 31)
	}
	distinct := n * 8 / 10
	lines := make([]string, 0, n)
	var v24 []string
	for i := range distinct {
		r := next()
		if float64(i) < float64(distinct)*changed {
			r ^= 0x5a5a5a5a // a different entry in the new list
		}
		a := [4]byte{byte(r>>24) | 1, byte(r >> 16), byte(r >> 8), byte(r)}
		switch {
		case r>>60 == 0:
			p := netip.PrefixFrom(netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, byte(r >> 40), byte(r >> 32), byte(r >> 24), byte(r >> 16)}), 64)
			lines = append(lines, p.String())
		case r>>60 < 3:
			s := netip.PrefixFrom(netip.AddrFrom4(a), 24).Masked().String()
			lines = append(lines, s+" ; SBL"+fmt.Sprint(i))
			v24 = append(v24, fmt.Sprintf("%d.%d.%d.", a[0], a[1], a[2]))
		default:
			lines = append(lines, netip.AddrFrom4(a).String())
		}
	}
	for i := 0; len(lines) < distinct+n/10; i++ {
		lines = append(lines, lines[(i*7919)%distinct])
	}
	for i := 0; len(lines) < n; i++ {
		lines = append(lines, v24[i%len(v24)]+fmt.Sprint(i%250+1))
	}
	var b bytes.Buffer
	b.WriteString("# synthetic feed\n")
	for i, l := range lines {
		// interleave so repeats are not adjacent
		_ = i
		b.WriteString(l)
		b.WriteByte('\n')
	}
	return b.Bytes()
}

var benchLim = Limits{MinPrefixV4: 8, MinPrefixV6: 32}

func BenchmarkParse100k(b *testing.B) {
	body := synth(100_000, 1, 0)
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	var rep Report
	for b.Loop() {
		var err error
		if _, rep, err = Parse(bytes.NewReader(body), benchLim); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(rep.Entries), "entries")
	b.ReportMetric(float64(rep.Duplicates+rep.Covered), "overlap")
}

func BenchmarkRefresh100k1pct(b *testing.B) {
	old, _, err := Parse(bytes.NewReader(synth(100_000, 1, 0)), benchLim)
	if err != nil {
		b.Fatal(err)
	}
	body := synth(100_000, 1, 0.01)
	b.ReportAllocs()
	var d Diff
	for b.Loop() {
		s, _, err := Parse(bytes.NewReader(body), benchLim)
		if err != nil {
			b.Fatal(err)
		}
		d = Compare(old, s)
	}
	b.ReportMetric(float64(d.Added.Len()), "added")
	b.ReportMetric(float64(d.Removed.Len()), "removed")
	b.ReportMetric(float64(d.Kept.Len()), "kept")
}

func BenchmarkCompare100k1pct(b *testing.B) {
	old, _, _ := Parse(bytes.NewReader(synth(100_000, 1, 0)), benchLim)
	s, _, _ := Parse(bytes.NewReader(synth(100_000, 1, 0.01)), benchLim)
	b.ReportAllocs()
	for b.Loop() {
		Compare(old, s)
	}
}

// BenchmarkMemory1M reports what one million entries cost: the heap held
// by the Set, its persisted size, and the peak of a parse.
func BenchmarkMemory1M(b *testing.B) {
	body := synth(1_250_000, 7, 0) // 1M distinct entries after overlap
	for b.Loop() {
		runtime.GC()
		var m0, m1 runtime.MemStats
		runtime.ReadMemStats(&m0)
		s, rep, err := Parse(bytes.NewReader(body), benchLim)
		if err != nil {
			b.Fatal(err)
		}
		runtime.GC()
		runtime.ReadMemStats(&m1)
		st := &State{Set: s}
		enc, _ := st.MarshalBinary()
		b.ReportMetric(float64(rep.Entries), "entries")
		b.ReportMetric(float64(m1.HeapAlloc-m0.HeapAlloc)/(1<<20), "set-MiB")
		b.ReportMetric(float64(m1.TotalAlloc-m0.TotalAlloc)/(1<<20), "parse-alloc-MiB")
		b.ReportMetric(float64(len(enc))/(1<<20), "state-MiB")
		runtime.KeepAlive(s)
	}
}
