// Package parrybin builds the parryd and parry binaries once per test binary,
// for end-to-end tests that run them as real processes, and collects their
// output safely.
package parrybin

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
)

var bin struct {
	once          sync.Once
	dir           string
	parryd, parry string
	err           error
}

// Build builds parryd and parry on first use and returns their paths. The
// directory is world-readable, so a test can run the CLI as another user.
// Call Remove from TestMain after m.Run.
func Build(t testing.TB) (parryd, parry string) {
	t.Helper()
	bin.once.Do(func() {
		bin.dir, bin.err = os.MkdirTemp("", "parry-test-bin")
		if bin.err != nil {
			return
		}
		if bin.err = os.Chmod(bin.dir, 0o755); bin.err != nil {
			return
		}
		bin.parryd, bin.parry = filepath.Join(bin.dir, "parryd"), filepath.Join(bin.dir, "parry")
		for out, pkg := range map[string]string{bin.parryd: "github.com/parryhq/parry/cmd/parryd", bin.parry: "github.com/parryhq/parry/cmd/parry"} {
			if b, err := exec.Command("go", "build", "-o", out, pkg).CombinedOutput(); err != nil {
				bin.err = fmt.Errorf("go build %s: %v: %s", pkg, err, b)
				return
			}
		}
	})
	if bin.err != nil {
		t.Fatal(bin.err)
	}
	if old := os.Getenv("PARRY_BENCH_PARRYD"); old != "" {
		// Benchmarks compare with another build of parryd (e.g. main's) in
		// the same run: the CLI stays this tree's.
		return old, bin.parry
	}
	return bin.parryd, bin.parry
}

// Remove deletes the built binaries, if any.
func Remove() {
	if bin.dir != "" {
		os.RemoveAll(bin.dir)
	}
}

// Buffer is a bytes.Buffer safe for a process's stdout and stderr and a
// reading test at once.
type Buffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *Buffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *Buffer) String() string { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }
