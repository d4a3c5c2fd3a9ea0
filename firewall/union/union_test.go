package union

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func pfxOf(s string) netip.Prefix { return netip.MustParsePrefix(s) }

func render[S comparable](ps []Piece[S]) []string {
	out := make([]string, 0, len(ps))
	for _, p := range ps {
		out = append(out, fmt.Sprintf("%v %v %d", p.Scope, p.Prefix, p.Expiry))
	}
	slices.Sort(out)
	return out
}

func renderDiff[S comparable](d Diff[S]) string {
	var b strings.Builder
	for _, l := range []struct {
		verb string
		ps   []Piece[S]
	}{{"add", d.Add}, {"del", d.Del}, {"retime", d.Retime}} {
		for _, s := range render(l.ps) {
			fmt.Fprintf(&b, "%s %s\n", l.verb, s)
		}
	}
	return b.String()
}

const (
	hour = int64(3_600_000)
	day  = 24 * hour
	t0   = int64(1_800_000_000_000) // a Unix time in ms
)

// TestIssueExample is the example of issue 14: block 198.51.100.0/24, block
// 198.51.100.0/25 for 1d, unblock the /24: the /25 stays. Once with the
// /24 for 1h (shorter than the /25) and once permanent (longer).
func TestIssueExample(t *testing.T) {
	for _, tc := range []struct {
		name  string
		exp24 int64
		steps []string // the diff after each step
		final []string
	}{
		{
			name: "/24 for 1h", exp24: t0 + hour,
			steps: []string{
				fmt.Sprintf("add 0 198.51.100.0/24 %d\n", t0+hour),
				fmt.Sprintf("add 0 198.51.100.0/25 %d\nadd 0 198.51.100.128/25 %d\ndel 0 198.51.100.0/24 %d\n", t0+day, t0+hour, t0+hour),
				fmt.Sprintf("del 0 198.51.100.128/25 %d\n", t0+hour),
			},
			final: []string{fmt.Sprintf("0 198.51.100.0/25 %d", t0+day)},
		},
		{
			name: "/24 permanent", exp24: 0,
			steps: []string{
				"add 0 198.51.100.0/24 0\n",
				"", // the permanent /24 already covers the /25
				fmt.Sprintf("add 0 198.51.100.0/25 %d\ndel 0 198.51.100.0/24 0\n", t0+day),
			},
			final: []string{fmt.Sprintf("0 198.51.100.0/25 %d", t0+day)},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			u := New[string, int]()
			u.Pieces() // start tracking
			b24 := Block[int]{Prefix: pfxOf("198.51.100.0/24"), Expiry: tc.exp24}
			b25 := Block[int]{Prefix: pfxOf("198.51.100.0/25"), Expiry: t0 + day}
			steps := []func(){
				func() { must(t, u.Add("a", b24)) },
				func() { must(t, u.Add("b", b25)) },
				func() { u.Remove("a", b24) },
			}
			for i, step := range steps {
				step()
				if d := cmp.Diff(tc.steps[i], renderDiff(u.Changes())); d != "" {
					t.Errorf("step %d diff (-want +got):\n%s", i+1, d)
				}
			}
			if d := cmp.Diff(tc.final, render(u.Pieces())); d != "" {
				t.Errorf("final pieces (-want +got):\n%s", d)
			}
		})
	}
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// TestCarve: a /8 minus an allowlisted /24 is the minimal 16 prefixes;
// lifting the carve-out merges them back into the /8.
func TestCarve(t *testing.T) {
	u := New[int, int]()
	must(t, u.Carve(pfxOf("10.1.2.0/24")))
	must(t, u.Add(1, Block[int]{Prefix: pfxOf("10.0.0.0/8"), Expiry: t0 + hour}))
	got := render(u.Pieces())
	want := []string{}
	for _, p := range []string{"10.0.0.0/16", "10.1.0.0/23", "10.1.3.0/24", "10.1.4.0/22", "10.1.8.0/21", "10.1.16.0/20", "10.1.32.0/19",
		"10.1.64.0/18", "10.1.128.0/17", "10.2.0.0/15", "10.4.0.0/14", "10.8.0.0/13", "10.16.0.0/12", "10.32.0.0/11", "10.64.0.0/10", "10.128.0.0/9"} {
		want = append(want, fmt.Sprintf("0 %s %d", p, t0+hour))
	}
	slices.Sort(want)
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("/8 minus /24 (-want +got):\n%s", d)
	}
	if _, ok := u.Expiry(netip.MustParseAddr("10.1.2.9"), 0); ok {
		t.Error("an address in the carve-out has an expiry")
	}
	if e, ok := u.Expiry(netip.MustParseAddr("10.1.3.9"), 0); !ok || e != t0+hour {
		t.Errorf("Expiry next to the carve-out = %d, %v", e, ok)
	}
	must(t, u.Uncarve(pfxOf("10.1.2.0/24")))
	d := u.Changes()
	if len(d.Add) != 1 || d.Add[0].Prefix != pfxOf("10.0.0.0/8") || len(d.Del) != 16 || len(d.Retime) != 0 {
		t.Errorf("after Uncarve: %s", renderDiff(d))
	}
	// A carve-out over a whole block leaves nothing; IPv4-mapped input is IPv4.
	must(t, u.Carve(pfxOf("::ffff:10.0.0.0/100")))
	if d := u.Changes(); len(d.Del) != 1 || len(d.Add) != 0 || len(u.Pieces()) != 0 {
		t.Errorf("carving the whole /8: %s", renderDiff(d))
	}
}

func TestInvalid(t *testing.T) {
	u := New[int, int]()
	if err := u.Add(1, Block[int]{}); err == nil {
		t.Error("Add of an invalid prefix: no error")
	}
	if err := u.Add(1, Block[int]{Prefix: pfxOf("10.0.0.0/8"), Expiry: -1}); err == nil {
		t.Error("Add with a negative expiry: no error")
	}
	if err := u.Carve(pfxOf("::ffff:0.0.0.0/90")); err == nil {
		t.Error("Carve of a short IPv4-mapped prefix: no error")
	}
	if u.Len() != 0 || len(u.Pieces()) != 0 {
		t.Error("invalid input changed the union")
	}
}

// region is a small address space the property test paints address by
// address: 4,096 addresses per family.
type region struct {
	base netip.Prefix
	bits int // address bits (32 or 128)
}

var regions = []region{{pfxOf("10.0.0.0/20"), 32}, {pfxOf("2001:db8::/116"), 128}}

func (r region) addr(i int) netip.Addr {
	a := r.base.Addr()
	b := a.AsSlice()
	b[len(b)-2] |= byte(i >> 8)
	b[len(b)-1] |= byte(i)
	x, _ := netip.AddrFromSlice(b)
	return x
}

func (r region) index(a netip.Addr) int {
	b := a.AsSlice()
	return (int(b[len(b)-2])<<8 | int(b[len(b)-1])) & 0xfff
}

func (r region) random(rng *rand.Rand, minBits int) netip.Prefix {
	n := r.bits - 12 + minBits + rng.IntN(13-minBits)
	return netip.PrefixFrom(r.addr(rng.IntN(4096)), n).Masked()
}

type live struct {
	id int
	b  Block[int]
}

// TestProperties drives random blocks, removals and carve-outs through a
// tracking union and checks, after every change, that the diffs applied to
// a model kernel give exactly the full set of pieces, and every few changes,
// address by address, that pieces never overlap, every address's kernel
// expiry is the latest among the blocks covering it, carve-outs are never
// covered, and the pieces are minimal (no two sibling pieces with one value).
func TestProperties(t *testing.T) {
	for seed := range uint64(6) {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(seed, 14))
			u := New[int, int]()
			u.Pieces()
			kernel := map[string]int64{}
			var blocks []live
			carves := map[netip.Prefix]bool{}
			expiries := []int64{0, t0 + 1, t0 + 2, t0 + 3, t0 + 4}
			for step := range 1500 {
				switch r := rng.IntN(100); {
				case r < 55 || len(blocks) < 5:
					b := Block[int]{Prefix: regions[rng.IntN(2)].random(rng, 0), Scope: rng.IntN(2), Expiry: expiries[rng.IntN(len(expiries))]}
					if rng.IntN(4) == 0 && len(blocks) > 0 { // re-time an existing block
						i := rng.IntN(len(blocks))
						b = blocks[i].b
						b.Expiry = expiries[rng.IntN(len(expiries))]
						blocks[i].b = b
						must(t, u.Add(blocks[i].id, b))
						break
					}
					blocks = append(blocks, live{step, b})
					must(t, u.Add(step, b))
				case r < 90:
					i := rng.IntN(len(blocks))
					if !u.Remove(blocks[i].id, blocks[i].b) {
						t.Fatalf("step %d: Remove of a live block returned false", step)
					}
					blocks = slices.Delete(blocks, i, i+1)
				default:
					p := regions[rng.IntN(2)].random(rng, 4)
					if carves[p] {
						delete(carves, p)
						must(t, u.Uncarve(p))
					} else {
						carves[p] = true
						must(t, u.Carve(p))
					}
				}
				applyDiff(t, step, kernel, u.Changes())
				if step%10 != 0 {
					continue
				}
				full := u.Pieces()
				want := map[string]int64{}
				for _, p := range full {
					want[fmt.Sprintf("%d %v", p.Scope, p.Prefix)] = p.Expiry
				}
				if d := cmp.Diff(want, kernel); d != "" {
					t.Fatalf("step %d: diffs applied != full pieces (-full +diffs):\n%s", step, d)
				}
				checkAddresses(t, step, u, full, blocks, carves)
			}
			if u.Len() != len(blocks) {
				t.Errorf("Len = %d, want %d", u.Len(), len(blocks))
			}
			for _, l := range blocks {
				u.Remove(l.id, l.b)
			}
			applyDiff(t, -1, kernel, u.Changes())
			if len(kernel) != 0 || len(u.Pieces()) != 0 {
				t.Errorf("after removing every block: kernel %v", kernel)
			}
		})
	}
}

func applyDiff(t *testing.T, step int, kernel map[string]int64, d Diff[int]) {
	t.Helper()
	key := func(p Piece[int]) string { return fmt.Sprintf("%d %v", p.Scope, p.Prefix) }
	for _, p := range d.Del {
		if e, ok := kernel[key(p)]; !ok || e != p.Expiry {
			t.Fatalf("step %d: del %s %d: kernel has %d, %v", step, key(p), p.Expiry, e, ok)
		}
		delete(kernel, key(p))
	}
	for _, p := range d.Retime {
		if e, ok := kernel[key(p)]; !ok || e == p.Expiry {
			t.Fatalf("step %d: retime %s %d: kernel has %d, %v", step, key(p), p.Expiry, e, ok)
		}
		kernel[key(p)] = p.Expiry
	}
	for _, p := range d.Add {
		if e, ok := kernel[key(p)]; ok {
			t.Fatalf("step %d: add %s: already in the kernel (%d)", step, key(p), e)
		}
		kernel[key(p)] = p.Expiry
	}
}

func checkAddresses(t *testing.T, step int, u *Union[int, int], full []Piece[int], blocks []live, carves map[netip.Prefix]bool) {
	t.Helper()
	for ri, r := range regions {
		for scope := range 2 {
			var want, got [4096]int64 // internal values: none, or expiry (permanent = max)
			var covered [4096]bool
			paint := func(p netip.Prefix, f func(i int)) {
				first := r.index(p.Addr())
				for i := first; i < first+1<<(r.bits-p.Bits()); i++ {
					f(i)
				}
			}
			for _, l := range blocks {
				if l.b.Scope == scope && r.base.Overlaps(l.b.Prefix) {
					paint(l.b.Prefix, func(i int) { want[i] = max(want[i], internal(l.b.Expiry)) })
				}
			}
			for c := range carves {
				if r.base.Overlaps(c) {
					paint(c, func(i int) { want[i] = none })
				}
			}
			pieceAt := map[netip.Prefix]int64{}
			for _, p := range full {
				if p.Scope != scope || !r.base.Overlaps(p.Prefix) {
					continue
				}
				pieceAt[p.Prefix] = p.Expiry
				paint(p.Prefix, func(i int) {
					if covered[i] {
						t.Fatalf("step %d: pieces overlap at %v (scope %d)", step, r.addr(i), scope)
					}
					covered[i] = true
					got[i] = internal(p.Expiry)
				})
			}
			for i := range 4096 {
				if want[i] != got[i] {
					t.Fatalf("step %d, region %d, scope %d: %v has kernel expiry %d, want %d (latest covering block)", step, ri, scope, r.addr(i), got[i], want[i])
				}
				if i%61 == 0 { // sampled: Expiry agrees
					e, ok := u.Expiry(r.addr(i), scope)
					if ok != (want[i] != none) || ok && internal(e) != want[i] {
						t.Fatalf("step %d: Expiry(%v) = %d, %v; want %d", step, r.addr(i), e, ok, want[i])
					}
				}
			}
			for p, e := range pieceAt { // minimal: a piece's sibling never has its value
				if p.Bits() == 0 {
					continue
				}
				if se, ok := pieceAt[siblingOf(p)]; ok && se == e {
					t.Fatalf("step %d: sibling pieces %v and %v both %d: not minimal", step, p, siblingOf(p), e)
				}
			}
		}
	}
}

// siblingOf flips the last bit of the prefix.
func siblingOf(p netip.Prefix) netip.Prefix {
	b := p.Addr().AsSlice()
	i := p.Bits() - 1
	b[i/8] ^= 0x80 >> (i % 8)
	a, _ := netip.AddrFromSlice(b)
	return netip.PrefixFrom(a, p.Bits())
}
