package audit

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// benchHistory writes a log of about size bytes at path with cfg and
// returns the anchor of its last line, as the daemon saves it after the
// last fsync.
func benchHistory(b *testing.B, path string, cfg Config, size int64) Anchor {
	b.Helper()
	l, err := OpenConfig(path, cfg, time.Now, nil)
	if err != nil {
		b.Fatal(err)
	}
	l.maint.manual = true
	var a Anchor
	l.OnSync(func(x Anchor) { a = x })
	targets := make([]string, 48)
	for i := range targets {
		targets[i] = fmt.Sprintf(`"203.0.113.%d"`, i)
	}
	raw := Raw(`{"targets":[` + strings.Join(targets, ",") + `],"reason":"benchmark history","source":"bench"}`)
	batch := make([]Event, 1000)
	for i := range batch {
		batch[i] = Event{Name: "block", Fields: raw}
	}
	for written := int64(0); written < size; written += int64(len(batch)) * 1000 {
		if _, err := l.AppendAll(batch...); err != nil {
			b.Fatal(err)
		}
	}
	if err := l.Close(); err != nil {
		b.Fatal(err)
	}
	return a
}

// startAudit is the audit part of parryd's start: the anchor check, then
// the open (which continues the chain), then close.
func startAudit(b *testing.B, path string, cfg Config, a Anchor) {
	res, err := CheckAnchor(path, a)
	if err != nil || !res.OK {
		b.Fatalf("anchor check = %+v, %v", res, err)
	}
	l, err := OpenConfig(path, cfg, time.Now, nil)
	if err != nil {
		b.Fatal(err)
	}
	if l.Seq() != a.Seq {
		b.Fatalf("opened at %d, anchor %d", l.Seq(), a.Seq)
	}
	if err := l.Close(); err != nil {
		b.Fatal(err)
	}
}

// BenchmarkStartWithHistory measures the audit part of parryd's start
// (CheckAnchor with the anchor of the last fsync, then OpenConfig and
// Close) with no history and with PARRY_BENCH_HISTORY bytes of it (default
// 1 GiB; 1 KiB lines): rotated into 64 MiB segments, and as one legacy
// audit.log, with the anchor as saved now and as saved by a version
// without positions ("legacy-anchor", located by a binary search on seq).
// For comparison, "full-verify" is the check start made before anchors had
// an offset (VerifyFileAgainst over the whole log). The files
// are written once, in PARRY_BENCH_DIR (default the test's temp dir), and
// read from the page cache.
//
//	go test -run '^$' -bench StartWithHistory -benchtime 20x ./agent/audit/
func BenchmarkStartWithHistory(b *testing.B) {
	size := int64(1 << 30)
	if s := os.Getenv("PARRY_BENCH_HISTORY"); s != "" {
		v, err := ParseSize(s)
		if err != nil {
			b.Fatal(err)
		}
		size = int64(v)
	}
	root := os.Getenv("PARRY_BENCH_DIR")
	if root == "" {
		root = b.TempDir()
	} else {
		var err error
		if root, err = os.MkdirTemp(root, "audit-bench-"); err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { os.RemoveAll(root) })
	}
	plain := Config{Compress: no(), Keep: -1}
	mk := func(name string, cfg Config, size int64) (string, Anchor) {
		dir := filepath.Join(root, name)
		if err := os.MkdirAll(dir, 0o700); err != nil {
			b.Fatal(err)
		}
		path := filepath.Join(dir, "audit.log")
		return path, benchHistory(b, path, cfg, size)
	}
	none, noneA := mk("none", plain, 1000*1000)
	segd, segA := mk("segments", plain, size)
	oneCfg := Config{Compress: no(), Keep: -1, MaxSize: Size(2 * size)}
	one, oneA := mk("one-file", oneCfg, size)
	segs, _ := Segments(segd)
	hist := fmt.Sprintf("%dMiB", size>>20)
	b.Run("history=none", func(b *testing.B) {
		for b.Loop() {
			startAudit(b, none, plain, noneA)
		}
	})
	b.Run(fmt.Sprintf("history=%s/segments=%d", hist, len(segs)), func(b *testing.B) {
		for b.Loop() {
			startAudit(b, segd, plain, segA)
		}
	})
	b.Run(fmt.Sprintf("history=%s/one-file", hist), func(b *testing.B) {
		for b.Loop() {
			startAudit(b, one, oneCfg, oneA)
		}
	})
	b.Run(fmt.Sprintf("history=%s/one-file/legacy-anchor", hist), func(b *testing.B) {
		for b.Loop() { // an anchor saved before anchors had a position
			startAudit(b, one, oneCfg, Anchor{Seq: oneA.Seq, Hash: oneA.Hash})
		}
	})
	b.Run(fmt.Sprintf("history=%s/one-file/full-verify", hist), func(b *testing.B) {
		for b.Loop() {
			if res, err := VerifyFileAgainst(one, oneA.Seq, oneA.Hash); err != nil || !res.OK {
				b.Fatalf("%+v, %v", res, err)
			}
		}
	})
}
