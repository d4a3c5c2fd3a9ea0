package store

import (
	"errors"
	"math/rand/v2"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// testPageSize is bbolt's page size on the test machine (the OS page size).
var testPageSize = os.Getpagesize()

// writeStore fills a fresh store with n blocks and returns its path.
func writeStore(t *testing.T, n int) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "store.db")
	s, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Date(2026, 11, 27, 0, 0, 0, 0, time.UTC)
	var blocks []Block
	for i := range n {
		a := netip.AddrFrom4([4]byte{198, 51, byte(i >> 8), byte(i)})
		blocks = append(blocks, Block{Prefix: netip.PrefixFrom(a, 32), Created: now.UnixMilli(), Until: now.Add(time.Hour).UnixMilli(), Decision: 1})
	}
	if err := s.Commit(Change{PutDecisions: []Decision{{Seq: 1, ID: "d1", Time: now, Reason: "test"}}, PutBlocks: blocks}); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	return path
}

// openAndLoad opens path and loads every block; it fails the test if
// anything panics (the point of the check) rather than returning.
func openAndLoad(path string) (n int, err error) {
	s, err := Open(path)
	if err != nil {
		return 0, err
	}
	defer s.Close()
	err = s.Load(func(Block) { n++ }, func(Decision) {})
	return n, err
}

func corruptPage(t *testing.T, path string, page int, b []byte) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(b, int64(page*testPageSize)); err != nil {
		t.Fatal(err)
	}
}

// TestCorruptPages overwrites each page of a store in turn with random
// bytes or zeros: Open must either refuse it with a *CorruptError or open
// it with every block intact (the page was free). It must never panic or
// load a partial store silently.
func TestCorruptPages(t *testing.T) {
	const n = 3000
	orig := writeStore(t, n)
	data, err := os.ReadFile(orig)
	if err != nil {
		t.Fatal(err)
	}
	pages := len(data) / testPageSize
	rng := rand.New(rand.NewPCG(1, 2))
	detected := 0
	for page := 2; page < pages; page++ {
		for _, fill := range []string{"random", "zero"} {
			path := filepath.Join(t.TempDir(), "store.db")
			if err := os.WriteFile(path, data, 0o600); err != nil {
				t.Fatal(err)
			}
			b := make([]byte, testPageSize)
			if fill == "random" {
				for i := range b {
					b[i] = byte(rng.Uint32())
				}
			}
			corruptPage(t, path, page, b)
			got, err := openAndLoad(path)
			var ce *CorruptError
			switch {
			case err == nil && got == n:
			case err == nil:
				t.Errorf("page %d %s: opened with %d of %d blocks and no error", page, fill, got, n)
			case errors.As(err, &ce) && errors.Is(err, ErrCorrupt):
				detected++
			default:
				t.Errorf("page %d %s: error is not a *CorruptError: %v", page, fill, err)
			}
		}
	}
	if detected == 0 {
		t.Fatalf("no corruption of %d pages was detected", pages-2)
	}
	t.Logf("%d pages, %d corruptions detected", pages, detected)
}

func TestCorruptFile(t *testing.T) {
	garbage := make([]byte, 4*testPageSize)
	rng := rand.New(rand.NewPCG(3, 4))
	for i := range garbage {
		garbage[i] = byte(rng.Uint32())
	}
	cases := []struct {
		name string
		mod  func(t *testing.T, path string)
	}{
		{"truncated to half", func(t *testing.T, path string) {
			fi, _ := os.Stat(path)
			if err := os.Truncate(path, fi.Size()/2); err != nil {
				t.Fatal(err)
			}
		}},
		{"truncated to three pages", func(t *testing.T, path string) {
			if err := os.Truncate(path, int64(3*testPageSize)); err != nil {
				t.Fatal(err)
			}
		}},
		{"truncated inside the meta pages", func(t *testing.T, path string) {
			if err := os.Truncate(path, 100); err != nil {
				t.Fatal(err)
			}
		}},
		{"both meta pages overwritten", func(t *testing.T, path string) {
			corruptPage(t, path, 0, garbage[:2*testPageSize])
		}},
		{"random file", func(t *testing.T, path string) {
			if err := os.WriteFile(path, garbage, 0o600); err != nil {
				t.Fatal(err)
			}
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			path := writeStore(t, 3000)
			c.mod(t, path)
			_, err := openAndLoad(path)
			var ce *CorruptError
			if !errors.As(err, &ce) || !errors.Is(err, ErrCorrupt) {
				t.Fatalf("want a *CorruptError, got %v", err)
			}
			if ce.Path != path {
				t.Errorf("error names %q, want %q", ce.Path, path)
			}
			if fi, err := os.Stat(path); err != nil || fi.Size() == 0 {
				t.Errorf("the corrupt file was changed or removed: %v", err)
			}
		})
	}
}

// TestCheckLockedByOther: the read-only check must not break the "another
// parryd" message (it takes a shared lock, which the holder's exclusive
// lock refuses).
func TestCheckLockedByOther(t *testing.T) {
	path := writeStore(t, 10)
	s, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	_, err = Open(path)
	var ce *CorruptError
	if err == nil || errors.As(err, &ce) {
		t.Fatalf("second open: want a lock error, got %v", err)
	}
}

// BenchmarkOpenCheck measures the start-up cost of the consistency check
// on a store of 100,000 blocks.
func BenchmarkOpenCheck(b *testing.B) {
	path := filepath.Join(b.TempDir(), "store.db")
	s, err := Open(path)
	if err != nil {
		b.Fatal(err)
	}
	var blocks []Block
	for i := range 100000 {
		a := netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})
		blocks = append(blocks, Block{Prefix: netip.PrefixFrom(a, 32), Created: 1, Until: 2, Decision: 1})
	}
	if err := s.Commit(Change{PutBlocks: blocks}); err != nil {
		b.Fatal(err)
	}
	s.Close()
	fi, _ := os.Stat(path)
	b.ReportMetric(float64(fi.Size())/(1<<20), "MiB")
	b.ResetTimer()
	for range b.N {
		if err := check(path, options()); err != nil {
			b.Fatal(err)
		}
	}
}
