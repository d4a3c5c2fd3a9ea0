package integrity

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
)

// benchTree writes n files of 1-64 KiB (about 32 MiB per 1,000 files) in
// directories of 250. The full-size comparison with AIDE (50,000 files,
// 2 GiB) is test/integrity-bench.
func benchTree(b *testing.B, n int) (string, int64) {
	b.Helper()
	dir := b.TempDir()
	rng := rand.New(rand.NewPCG(1, 2))
	src := make([]byte, 64<<10)
	for i := range src {
		src[i] = byte(rng.Uint32())
	}
	var total int64
	for i := range n {
		d := filepath.Join(dir, fmt.Sprintf("d%03d", i/250))
		if i%250 == 0 {
			if err := os.MkdirAll(d, 0o755); err != nil {
				b.Fatal(err)
			}
		}
		size := 1<<10 + rng.IntN(63<<10)
		if err := os.WriteFile(filepath.Join(d, fmt.Sprint(i)), src[:size], 0o644); err != nil {
			b.Fatal(err)
		}
		total += int64(size)
	}
	return dir, total
}

func BenchmarkScan(b *testing.B) {
	for _, algo := range []string{HashSHA256, HashBLAKE3} {
		b.Run(algo, func(b *testing.B) {
			dir, total := benchTree(b, 2000)
			cfg := testConfig(dir)
			cfg.Hash = algo
			cfg.Workers = 0
			sc, err := NewScanner(cfg)
			if err != nil {
				b.Fatal(err)
			}
			b.SetBytes(total)
			for b.Loop() {
				if _, err := sc.Scan(context.Background()); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkCheck(b *testing.B) {
	dir, total := benchTree(b, 2000)
	m, err := NewMonitor(testConfig(dir), Options{StateDir: b.TempDir()})
	if err != nil {
		b.Fatal(err)
	}
	if _, err := m.Baseline(context.Background()); err != nil {
		b.Fatal(err)
	}
	b.SetBytes(total)
	for b.Loop() {
		if fs, err := m.Check(context.Background()); err != nil || len(fs) != 0 {
			b.Fatal(err, fs)
		}
	}
}

// BenchmarkFastCheck is the scheduled check between full ones on an
// unchanged tree of 20,000 small files (test/integrity-bench -mode fast
// runs 50,000 beside aide --check).
func BenchmarkFastCheck(b *testing.B) {
	dir := b.TempDir()
	for i := range 20000 {
		d := filepath.Join(dir, fmt.Sprintf("d%03d", i/250))
		if i%250 == 0 {
			if err := os.MkdirAll(d, 0o755); err != nil {
				b.Fatal(err)
			}
		}
		if err := os.WriteFile(filepath.Join(d, fmt.Sprintf("f%05d.dat", i)), []byte("x"), 0o644); err != nil {
			b.Fatal(err)
		}
	}
	m, err := NewMonitor(testConfig(dir), Options{StateDir: b.TempDir()})
	if err != nil {
		b.Fatal(err)
	}
	if _, err := m.Baseline(context.Background()); err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		if fs, err := m.FastCheck(context.Background()); err != nil || len(fs) != 0 {
			b.Fatal(err, fs)
		}
	}
}
