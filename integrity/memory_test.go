package integrity

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime/debug"
	"testing"
)

// TestDecodeBaselineRefusesEveryTruncation: the decoder reading as it goes
// refuses every prefix of a valid baseline and a trailing byte, and a
// string length beyond the bound allocates nothing.
func TestDecodeBaselineRefusesEveryTruncation(t *testing.T) {
	b := &Baseline{Algo: HashSHA256, Entries: map[string]Entry{
		"/etc/a":       {Type: TypeFile, Mode: 0o644, Size: 3, Hash: [32]byte{1}},
		"/etc/ab":      {Type: TypeSymlink, Target: "a", Xattrs: "user.x=01"},
		"/etc/sub/dir": {Type: TypeDir, Mode: 0o755, Err: "flags: bad"},
	}}
	data := b.Encode()
	got, err := DecodeBaseline(data)
	must(t, err)
	for p, e := range b.Entries {
		if got.Entries[p] != e {
			t.Fatalf("%s: %+v, want %+v", p, got.Entries[p], e)
		}
	}
	for n := range len(data) {
		if _, err := DecodeBaseline(data[:n]); err == nil {
			t.Fatalf("a baseline cut at %d of %d bytes was accepted", n, len(data))
		}
	}
	if _, err := DecodeBaseline(append(data, 0)); err == nil {
		t.Fatal("trailing byte accepted")
	}
	huge := append([]byte(baselineMagic), 0xff, 0xff, 0xff, 0xff, 0x0f) // algo length 4 GiB
	if _, err := DecodeBaseline(huge); err == nil {
		t.Fatal("huge string length accepted")
	}
}

// TestLoadBaselineDigestOfStream: a baseline file whose bytes were changed
// is refused as tampered though it decodes, and one that does not decode
// is refused as tampered, not as an I/O error.
func TestLoadBaselineDigestOfStream(t *testing.T) {
	dir := t.TempDir()
	b := &Baseline{Algo: HashSHA256, Entries: map[string]Entry{"/etc/a": {Type: TypeFile, Size: 1}}}
	digest, err := SaveBaseline(dir, b)
	must(t, err)
	if _, d, err := LoadBaseline(dir, digest); err != nil || d != digest {
		t.Fatalf("load: %v %s", err, d)
	}
	data := b.Encode()
	data[len(data)-40] ^= 1 // inside the hash: still decodes
	must(t, os.WriteFile(filepath.Join(dir, BaselineFile), data, 0o600))
	if _, _, err := LoadBaseline(dir, ""); !isTampered(err) {
		t.Fatalf("changed byte: %v", err)
	}
	must(t, os.WriteFile(filepath.Join(dir, BaselineFile), data[:20], 0o600))
	if _, _, err := LoadBaseline(dir, ""); !isTampered(err) {
		t.Fatalf("cut file: %v", err)
	}
}

func isTampered(err error) bool { return errors.Is(err, ErrBaselineTampered) }

// TestPathSet: every added path is found, others are not.
func TestPathSet(t *testing.T) {
	m, err := NewMonitor(testConfig(t.TempDir()), Options{StateDir: t.TempDir()})
	must(t, err)
	s := newPathSet(&m.seeds, 0)
	for i := range 5000 {
		s.add(fmt.Sprintf("/etc/d%d/f%d", i%50, i))
	}
	s.seal()
	for i := range 5000 {
		if !s.has(fmt.Sprintf("/etc/d%d/f%d", i%50, i)) {
			t.Fatalf("path %d not found", i)
		}
		if s.has(fmt.Sprintf("/etc/d%d/g%d", i%50, i)) {
			t.Fatalf("path g%d found", i)
		}
	}
}

// TestTightGCRestores: GOGC is lowered while any full check runs and put
// back when the last one ends.
func TestTightGCRestores(t *testing.T) {
	old := debug.SetGCPercent(100)
	defer debug.SetGCPercent(old)
	a := tightGC()
	b := tightGC()
	if got := debug.SetGCPercent(checkGCPercent); got != checkGCPercent {
		t.Fatalf("GOGC during a check %d, want %d", got, checkGCPercent)
	}
	a()
	a() // twice is once
	if got := debug.SetGCPercent(checkGCPercent); got != checkGCPercent {
		t.Fatalf("GOGC with one check left %d", got)
	}
	b()
	if got := debug.SetGCPercent(100); got != 100 {
		t.Fatalf("GOGC after the checks %d, want 100", got)
	}
}
