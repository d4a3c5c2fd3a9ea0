package audit

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/parryhq/parry/agent/api"
	"github.com/parryhq/parry/test/netns"
)

type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func newClock() *fakeClock { return &fakeClock{t: time.Date(2026, 11, 27, 0, 0, 0, 0, time.UTC)} }

func no() *bool { f := false; return &f }

// openRot opens a log with cfg whose maintenance runs only when the test
// calls Maintain.
func openRot(t *testing.T, path string, cfg Config, clk *fakeClock) *Log {
	t.Helper()
	l, err := OpenConfig(path, cfg, clk.now, nil)
	if err != nil {
		t.Fatal(err)
	}
	l.maint.manual = true
	t.Cleanup(func() { l.Close() })
	return l
}

// fill appends n lines of about 100 bytes.
func fill(t *testing.T, l *Log, n int) {
	t.Helper()
	for i := range n {
		if err := l.Append("block", map[string]any{"i": i, "targets": []string{"203.0.113.7"}, "reason": "test rotation"}); err != nil {
			t.Fatal(err)
		}
	}
}

func segNames(t *testing.T, path string) []string {
	t.Helper()
	segs, err := Segments(path)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, s := range segs {
		out = append(out, s.Name)
	}
	return out
}

func mustVerify(t *testing.T, path string) Result {
	t.Helper()
	res, err := VerifyFile(path)
	if err != nil || !res.OK {
		t.Fatalf("verify = %+v, %v", res, err)
	}
	return res
}

func mustBreak(t *testing.T, path, file, reason string) Result {
	t.Helper()
	res, err := VerifyFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if res.OK || res.File != file || !strings.Contains(res.Reason, reason) {
		t.Fatalf("verify = %+v; want broken in %s with %q", res, file, reason)
	}
	return res
}

// readSeqs reads every line of r and returns their seqs.
func readSeqs(t *testing.T, r io.ReadCloser) []uint64 {
	t.Helper()
	defer r.Close()
	var out []uint64
	sc := bufio.NewScanner(r)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		out = append(out, lineSeq(sc.Bytes()))
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

func consecutive(t *testing.T, seqs []uint64, from, to uint64) {
	t.Helper()
	if len(seqs) != int(to-from+1) {
		t.Fatalf("%d lines, want seq %d..%d", len(seqs), from, to)
	}
	for i, s := range seqs {
		if s != from+uint64(i) {
			t.Fatalf("line %d has seq %d, want %d", i, s, from+uint64(i))
		}
	}
}

func TestRotationChainsAcrossSegments(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	l := openRot(t, path, Config{MaxSize: 4096, Compress: no(), Keep: -1}, newClock())
	fill(t, l, 200)
	names := segNames(t, path)
	if len(names) < 4 || names[len(names)-1] != "audit.log" || names[0] != "audit-00000000000000000001.log" {
		t.Fatalf("segments %v", names)
	}
	segs, _ := Segments(path)
	for i, s := range segs {
		head, err := firstLine(splitPath(path), s)
		if err != nil {
			t.Fatal(err)
		}
		if lineSeq(head) != s.First {
			t.Fatalf("%s: first line seq %d, name says %d", s.Name, lineSeq(head), s.First)
		}
		if !s.Current {
			if st, _ := os.Stat(filepath.Join(filepath.Dir(path), s.Name)); st.Size() < 4096 || st.Size() > 4096+400 {
				t.Fatalf("%s is %d bytes, want just past 4096 (one more line)", s.Name, st.Size())
			}
		}
		if i == 0 {
			continue
		}
		var h struct {
			Event  string       `json:"event"`
			Fields segmentStart `json:"fields"`
			Prev   string       `json:"prev"`
		}
		if err := json.Unmarshal(head, &h); err != nil {
			t.Fatal(err)
		}
		prev, _ := segmentLast(splitPath(path), segs[i-1])
		pseq, phash := lineEnd(prev)
		if h.Event != EventSegmentStart || h.Fields.Previous != segs[i-1].Name || h.Fields.PreviousFirstSeq != segs[i-1].First ||
			h.Fields.PreviousLastSeq != pseq || h.Fields.PreviousHash != phash || h.Prev != phash {
			t.Fatalf("%s starts with %s; previous ends at seq %d hash %s", s.Name, head, pseq, phash)
		}
	}
	seq, hash := l.Last()
	res := mustVerify(t, path)
	if res.Lines != int(seq) || res.LastSeq != seq || res.Segments != len(names) || res.FirstSeq != 1 {
		t.Fatalf("verify = %+v, want %d lines in %d segments", res, seq, len(names))
	}
	if r, _ := VerifyFileAgainst(path, seq, hash); !r.OK {
		t.Fatalf("against the writer's checkpoint: %+v", r)
	}
	all, err := OpenAll(path)
	if err != nil {
		t.Fatal(err)
	}
	consecutive(t, readSeqs(t, all), 1, seq)
	// A reopened log continues the chain in the current segment.
	l.Close()
	l = openRot(t, path, Config{MaxSize: 4096, Compress: no(), Keep: -1}, newClock())
	if l.Seq() != seq {
		t.Fatalf("reopened at seq %d, want %d", l.Seq(), seq)
	}
	fill(t, l, 50)
	mustVerify(t, path)
}

func TestOldSegmentsCompressed(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	l := openRot(t, path, Config{MaxSize: 4096, Keep: -1}, newClock())
	fill(t, l, 200)
	if err := l.Maintain(); err != nil {
		t.Fatal(err)
	}
	segs, _ := Segments(path)
	dir := filepath.Dir(path)
	var plain, gz int64
	for _, s := range segs[:len(segs)-1] {
		if !s.Compressed || !strings.HasSuffix(s.Name, ".log.gz") {
			t.Fatalf("%s not compressed", s.Name)
		}
		if _, err := os.Stat(filepath.Join(dir, strings.TrimSuffix(s.Name, ".gz"))); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("plain copy of %s left: %v", s.Name, err)
		}
		f, _ := os.Open(filepath.Join(dir, s.Name))
		st, _ := f.Stat()
		gz += st.Size()
		zr, err := gzip.NewReader(f)
		if err != nil {
			t.Fatal(err)
		}
		n, err := io.Copy(io.Discard, zr)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		plain += n
	}
	if gz*2 > plain {
		t.Fatalf("compressed %d bytes into %d", plain, gz)
	}
	seq, _ := l.Last()
	if res := mustVerify(t, path); res.LastSeq != seq {
		t.Fatalf("verify %+v", res)
	}
	all, _ := OpenAll(path)
	consecutive(t, readSeqs(t, all), 1, seq)
	// A compressed segment edited (a byte flipped) is a break.
	b, _ := os.ReadFile(filepath.Join(dir, segs[1].Name))
	b[len(b)/2] ^= 0x40
	os.WriteFile(filepath.Join(dir, segs[1].Name), b, 0o600)
	res, err := VerifyFile(path)
	if err != nil || res.OK || res.File != segs[1].Name {
		t.Fatalf("verify after editing %s = %+v, %v", segs[1].Name, res, err)
	}
}

// removedRecords are the segment_removed lines of the log.
func removedRecords(t *testing.T, path string) []Removed {
	t.Helper()
	r, err := OpenAll(path)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	var out []Removed
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		var l struct {
			Event  string  `json:"event"`
			Fields Removed `json:"fields"`
		}
		if json.Unmarshal(sc.Bytes(), &l) == nil && l.Event == EventSegmentRemoved {
			out = append(out, l.Fields)
		}
	}
	return out
}

func TestRetentionByCount(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	l := openRot(t, path, Config{MaxSize: 4096, Keep: 2}, newClock())
	fill(t, l, 200)
	before := segNames(t, path)
	if err := l.Sync(); err != nil {
		t.Fatal(err)
	}
	// The removal records may fill the current segment and rotate it: the
	// background maintenance runs again then; here, the test does.
	for n := -1; n != l.rot.count; {
		n = l.rot.count
		if err := l.Maintain(); err != nil {
			t.Fatal(err)
		}
	}
	after := segNames(t, path)
	if len(after) != 3 {
		t.Fatalf("segments after retention %v, want 2 old and the current", after)
	}
	recs := removedRecords(t, path)
	gone := map[uint64]bool{}
	for _, r := range recs {
		if r.Reason != "keep" || r.FirstSeq == 0 || r.LastSeq < r.FirstSeq || len(r.LastHash) != 64 || slices.Contains(after, r.Segment) {
			t.Fatalf("record %+v (segments left %v)", r, after)
		}
		gone[r.FirstSeq] = true
	}
	segs0 := len(before) - 1
	for _, name := range before[:segs0-2] {
		first, _, _ := splitPath(path).parse(name)
		if !gone[first] {
			t.Fatalf("%s removed without a record: %+v", name, recs)
		}
	}
	res := mustVerify(t, path)
	if len(res.Removed) != len(recs) || res.FirstSeq != recs[len(recs)-1].LastSeq+1 {
		t.Fatalf("verify = %+v; want the removed segments listed and the chain from seq %d", res, recs[len(recs)-1].LastSeq+1)
	}
	// Deleting the oldest segment left (outside retention) is a break.
	segs, _ := Segments(path)
	os.Remove(filepath.Join(filepath.Dir(path), segs[0].Name))
	mustBreak(t, path, segs[1].Name, "outside retention")
}

func TestRetentionByAge(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	clk := newClock()
	l := openRot(t, path, Config{MaxSize: 4096, Keep: -1, MaxAge: apiDuration(48 * time.Hour)}, clk)
	fill(t, l, 100) // segments closed on day 0
	old := len(segNames(t, path)) - 1
	clk.add(24 * time.Hour)
	fill(t, l, 100) // closed on day 1
	l.Sync()
	if err := l.Maintain(); err != nil {
		t.Fatal(err)
	}
	if recs := removedRecords(t, path); len(recs) != 0 {
		t.Fatalf("removed before max_age: %+v", recs)
	}
	clk.add(25*time.Hour + time.Minute) // day 0's segments are 49 h old, day 1's 25 h
	l.Sync()
	if err := l.Maintain(); err != nil {
		t.Fatal(err)
	}
	recs := removedRecords(t, path)
	// The last segment of day 0 was closed by the first append of day 1.
	if len(recs) != old {
		t.Fatalf("%d removed, want the %d segments closed on day 0: %+v", len(recs), old, recs)
	}
	for _, r := range recs {
		if r.Reason != "max_age" {
			t.Fatalf("record %+v", r)
		}
	}
	res := mustVerify(t, path)
	if len(res.Removed) != old || res.FirstSeq != recs[old-1].LastSeq+1 {
		t.Fatalf("verify = %+v", res)
	}
}

func TestSegmentRemovedOrEditedIsABreak(t *testing.T) {
	for _, tc := range []struct {
		name   string
		tamper func(t *testing.T, dir string, segs []Segment)
		file   func(segs []Segment) string
		reason string
	}{
		{"middle deleted", func(t *testing.T, dir string, segs []Segment) {
			os.Remove(filepath.Join(dir, segs[2].Name))
		}, func(s []Segment) string { return s[3].Name }, "outside retention"},
		{"oldest deleted", func(t *testing.T, dir string, segs []Segment) {
			os.Remove(filepath.Join(dir, segs[0].Name))
		}, func(s []Segment) string { return s[1].Name }, "outside retention"},
		{"middle edited", func(t *testing.T, dir string, segs []Segment) {
			p := filepath.Join(dir, segs[2].Name)
			b, _ := os.ReadFile(p)
			os.WriteFile(p, bytes.Replace(b, []byte("203.0.113.7"), []byte("203.0.113.8"), 1), 0o600)
		}, func(s []Segment) string { return s[2].Name }, "hash mismatch"},
		{"middle replaced by a forged chain", func(t *testing.T, dir string, segs []Segment) {
			p := filepath.Join(dir, segs[2].Name)
			os.Remove(p)
			f := filepath.Join(t.TempDir(), "audit.log")
			fl, _ := Open(f, fixedNow)
			fill(t, fl, 30)
			fl.Close()
			b, _ := os.ReadFile(f)
			os.WriteFile(p, b, 0o600)
		}, func(s []Segment) string { return s[2].Name }, "overlap"},
		{"current deleted", func(t *testing.T, dir string, segs []Segment) {
			os.Remove(filepath.Join(dir, "audit.log"))
		}, func([]Segment) string { return "audit.log" }, "current segment audit.log is missing"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "audit.log")
			l := openRot(t, path, Config{MaxSize: 4096, Compress: no(), Keep: -1}, newClock())
			fill(t, l, 200)
			l.Close()
			segs, _ := Segments(path)
			if len(segs) < 5 {
				t.Fatalf("segments %v", segs)
			}
			tc.tamper(t, filepath.Dir(path), segs)
			mustBreak(t, path, tc.file(segs), tc.reason)
		})
	}
}

func TestTornTailAfterRotation(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	cfg := Config{MaxSize: 4096, Compress: no(), Keep: -1}
	l := openRot(t, path, cfg, newClock())
	fill(t, l, 60)
	seq, _ := l.Last()
	l.Close()
	f, _ := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	f.WriteString(`{"seq":99999,"time":"2026-11-27T00:00:00Z","event":"blo`) // a crash mid-write
	f.Close()
	l = openRot(t, path, cfg, newClock())
	if l.Seq() != seq {
		t.Fatalf("reopened at %d, want %d", l.Seq(), seq)
	}
	mustVerify(t, path)
	fill(t, l, 60)
	if res := mustVerify(t, path); res.LastSeq != seq+60+uint64(l.rot.count) {
		t.Fatalf("verify %+v", res)
	}
}

// crash abandons l as a kill -9 would: no sync, no further writes.
func crash(l *Log) {
	l.maint.stop()
	l.mu.Lock()
	l.f.Close()
	l.f = nil
	l.mu.Unlock()
}

func TestCrashDuringRotationRecoversOnOpen(t *testing.T) {
	for _, step := range []string{"created", "written", "renamed"} {
		t.Run(step, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "audit.log")
			cfg := Config{MaxSize: 4096, Compress: no(), Keep: -1}
			l := openRot(t, path, cfg, newClock())
			var anchor Anchor
			l.OnSync(func(a Anchor) { anchor = a })
			fill(t, l, 30) // one rotation done
			if err := l.Sync(); err != nil {
				t.Fatal(err)
			}
			l.crashAt = func(s string) error {
				if s == step {
					return errCrash
				}
				return nil
			}
			var err error
			for err == nil {
				err = l.Append("block", map[string]any{"targets": []string{"203.0.113.9"}, "reason": "fill the segment"})
			}
			if !errors.Is(err, errCrash) {
				t.Fatal(err)
			}
			seq, _ := l.Last()
			crash(l)
			// What the daemon checks before it opens the log: the anchor and
			// the whole chain, with the files as the crash left them.
			if res, err := CheckAnchor(path, anchor); err != nil || !res.OK {
				t.Fatalf("anchor check after the crash = %+v, %v", res, err)
			}
			mustVerify(t, path)
			l = openRot(t, path, cfg, newClock())
			if _, err := os.Stat(path + newSuffix); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("%s left after open: %v", path+newSuffix, err)
			}
			want := seq
			if step == "renamed" {
				want++ // the new segment's first line was written before the crash
			}
			if l.Seq() != want {
				t.Fatalf("reopened at seq %d, want %d", l.Seq(), want)
			}
			fill(t, l, 60)
			if res, err := CheckAnchor(path, anchor); err != nil || !res.OK {
				t.Fatalf("anchor check = %+v, %v", res, err)
			}
			res := mustVerify(t, path)
			all, _ := OpenAll(path)
			consecutive(t, readSeqs(t, all), 1, res.LastSeq)
		})
	}
}

func TestEmptyCurrentContinuesTheChain(t *testing.T) {
	// A current file left empty (created, never written) after old
	// segments: the chain continues from the newest of them.
	path := filepath.Join(t.TempDir(), "audit.log")
	cfg := Config{MaxSize: 4096, Keep: -1}
	l := openRot(t, path, cfg, newClock())
	fill(t, l, 60)
	if err := l.Maintain(); err != nil { // the old segments are compressed
		t.Fatal(err)
	}
	l.Close()
	segs, _ := Segments(path)
	os.WriteFile(path, nil, 0o600) // the current segment's lines are gone (only the anchor tells)
	l = openRot(t, path, cfg, newClock())
	last := segs[len(segs)-2]
	b, _ := segmentLast(splitPath(path), last)
	pseq, _ := lineEnd(b)
	if l.Seq() != pseq+1 {
		t.Fatalf("seq %d, want %d (a segment_start after %s)", l.Seq(), pseq+1, last.Name)
	}
	mustVerify(t, path)
}

func TestCheckAnchorReadsOnlyTheTail(t *testing.T) {
	// A current segment of 1 GiB whose bytes before the anchored line are
	// not audit lines (a sparse hole): a check that read them would fail,
	// so passing shows it reads only the tail.
	dir := t.TempDir()
	src := filepath.Join(dir, "src.log")
	sl, _ := Open(src, fixedNow)
	fill(t, sl, 20)
	sl.Close()
	lines := bytes.SplitAfter(mustRead(t, src), []byte("\n"))
	path := filepath.Join(dir, "audit.log")
	f, _ := os.Create(path)
	f.Write(lines[0])
	const hole = 1 << 30
	f.Truncate(int64(len(lines[0])) + hole)
	f.Seek(0, io.SeekEnd)
	f.Write([]byte("\n"))
	off, _ := f.Seek(0, io.SeekCurrent)
	for _, ln := range lines[10:] {
		f.Write(ln)
	}
	f.Close()
	seq, hash := lineEnd(bytes.TrimSuffix(lines[10], []byte("\n")))
	a := Anchor{Seq: seq, Hash: hash, Segment: 1, Offset: off}
	res, err := CheckAnchor(path, a)
	if err != nil || !res.OK || res.Lines != 10 || res.LastSeq != 20 {
		t.Fatalf("anchor check = %+v, %v; want the 10 lines from the anchor", res, err)
	}
	if full, _ := VerifyFile(path); full.OK {
		t.Fatal("the whole file verifies: the test proves nothing")
	}
	// Open reads only the end too, and continues the chain.
	l := openRot(t, path, Config{Compress: no(), Keep: -1, MaxSize: 2 << 30}, newClock())
	if l.Seq() != 20 {
		t.Fatalf("opened at %d", l.Seq())
	}
	fill(t, l, 1)
	l.Sync()
	if res, _ := CheckAnchor(path, a); !res.OK {
		t.Fatalf("after an append: %+v", res)
	}
	// The anchored line edited, the log cut before it, or another line at
	// the offset: the check fails.
	for _, tc := range []struct {
		name string
		a    Anchor
		want string
	}{
		{"other hash", Anchor{Seq: seq, Hash: Genesis, Segment: 1, Offset: off}, "not seq"},
		{"not a line start", Anchor{Seq: seq, Hash: hash, Segment: 1, Offset: off + 3}, "no line starts there"},
		{"past the end", Anchor{Seq: seq, Hash: hash, Segment: 1, Offset: off + hole}, "removed from its end"},
	} {
		if res, err := CheckAnchor(path, tc.a); err != nil || res.OK || !strings.Contains(res.Reason, tc.want) {
			t.Errorf("%s: %+v, %v; want %q", tc.name, res, err, tc.want)
		}
	}
}

func mustRead(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestCheckAnchorAcrossRotation(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	l := openRot(t, path, Config{MaxSize: 4096, Keep: -1}, newClock())
	var anchor Anchor
	l.OnSync(func(a Anchor) { anchor = a })
	fill(t, l, 10)
	l.Sync()
	first := anchor
	fill(t, l, 100) // rotations after the anchor
	if err := l.Maintain(); err != nil {
		t.Fatal(err)
	}
	if res, err := CheckAnchor(path, first); err != nil || !res.OK || res.LastSeq != l.Seq() {
		t.Fatalf("anchor in a compressed old segment: %+v, %v", res, err)
	}
	// The pending-record reader starts at the anchored line and crosses
	// the rotations.
	r, err := OpenAfter(path, first)
	if err != nil {
		t.Fatal(err)
	}
	consecutive(t, readSeqs(t, r), first.Seq, l.Seq())
	r, _ = OpenAfter(path, Anchor{Seq: first.Seq}) // an anchor without a position
	if seqs := readSeqs(t, r); seqs[0] > first.Seq+1 || seqs[len(seqs)-1] != l.Seq() {
		t.Fatalf("legacy anchor read %d..%d", seqs[0], seqs[len(seqs)-1])
	}
	l.Sync()
	last := anchor
	if last.Segment == first.Segment {
		t.Fatal("anchor did not move to a new segment")
	}
	// A segment after the anchor removed: the check fails.
	segs, _ := Segments(path)
	os.Remove(filepath.Join(filepath.Dir(path), segs[1].Name))
	if res, _ := CheckAnchor(path, first); res.OK || !strings.Contains(res.Reason, "missing") {
		t.Fatalf("segment after the anchor removed: %+v", res)
	}
	if res, _ := CheckAnchor(path, last); !res.OK {
		t.Fatalf("the newest anchor does not depend on it: %+v", res)
	}
}

func TestOpenSinceSkipsClosedSegments(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	clk := newClock()
	l := openRot(t, path, Config{MaxSize: 4096, Keep: -1}, clk)
	fill(t, l, 100)
	clk.add(48 * time.Hour)
	from := clk.now()
	fill(t, l, 100)
	l.Maintain()
	r, err := OpenSince(path, from.Add(-time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	seqs := readSeqs(t, r)
	all, _ := OpenAll(path)
	if n := len(readSeqs(t, all)); len(seqs) >= n || len(seqs) < 100 {
		t.Fatalf("read %d of %d lines for the last 49 h", len(seqs), n)
	}
	if seqs[len(seqs)-1] != l.Seq() {
		t.Fatal("the current segment was not read to its end")
	}
}

func TestKeepBrokenMovesEverySegment(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	l := openRot(t, path, Config{MaxSize: 4096, Keep: -1}, newClock())
	fill(t, l, 100)
	l.Maintain()
	n := len(segNames(t, path))
	l.Close()
	kept, err := KeepBroken(path, "broken-x")
	if err != nil || kept != "audit.log.broken-x" {
		t.Fatalf("kept %q, %v", kept, err)
	}
	if left := segNames(t, path); len(left) != 0 {
		t.Fatalf("left %v", left)
	}
	m, _ := filepath.Glob(filepath.Join(filepath.Dir(path), "*.broken-x"))
	if len(m) != n {
		t.Fatalf("kept %v, want %d files", m, n)
	}
	l = openRot(t, path, Config{}, newClock())
	if l.Seq() != 0 {
		t.Fatalf("new chain at %d", l.Seq())
	}
}

func TestConfig(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Size
		bad  bool
	}{{"64MiB", 64 << 20, false}, {"1 GiB", 1 << 30, false}, {"4096", 4096, false}, {"512KiB", 512 << 10, false},
		{"64MB", 0, true}, {"-1MiB", 0, true}, {"", 0, true}, {"1.5GiB", 0, true}} {
		got, err := ParseSize(tc.in)
		if (err != nil) != tc.bad || got != tc.want {
			t.Errorf("ParseSize(%q) = %v, %v", tc.in, got, err)
		}
	}
	if s := Size(64 << 20).String(); s != "64MiB" {
		t.Errorf("String = %s", s)
	}
	for _, c := range []Config{{MaxSize: 4096}, {MaxSize: 8 << 30}, {Keep: -2}, {MaxAge: apiDuration(time.Minute)}} {
		if c.Validate() == nil {
			t.Errorf("%+v validates", c)
		}
	}
	d := Config{}.WithDefaults()
	if d.Validate() != nil || d.MaxSize != DefaultMaxSize || d.Keep != DefaultKeep || !d.compress() || d.MaxAge != 0 {
		t.Errorf("defaults %+v", d)
	}
}

func apiDuration(d time.Duration) api.Duration { return api.Duration(d) }

func TestBackgroundMaintenanceCompressesAndStopsOnClose(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	l, err := OpenConfig(path, Config{MaxSize: 4096, Keep: 3}, newClock().now, nil)
	if err != nil {
		t.Fatal(err)
	}
	fill(t, l, 300)
	l.Sync()
	done := func() bool {
		segs, _ := Segments(path)
		old := 0
		for _, s := range segs {
			if !s.Current {
				old++
				if !s.Compressed {
					return false
				}
			}
		}
		return old <= 3
	}
	if !netns.Poll(10*time.Second, 10*time.Millisecond, done) {
		t.Fatalf("old segments not compressed and trimmed in the background: %v (%v)", segNames(t, path), l.MaintainError())
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	mustVerify(t, path)
}

func TestVerifyWithAStaleListOfSegments(t *testing.T) {
	// Maintenance compresses and removes segments while parry audit verify
	// reads them: a list taken before it still verifies.
	path := filepath.Join(t.TempDir(), "audit.log")
	l := openRot(t, path, Config{MaxSize: 4096, Keep: 4}, newClock())
	fill(t, l, 200)
	l.Sync()
	stale, _ := Segments(path)
	for n := -1; n != l.rot.count; {
		n = l.rot.count
		if err := l.Maintain(); err != nil {
			t.Fatal(err)
		}
	}
	if l.rot.count == 0 {
		t.Fatal("no rotation: the test needs the removal records to rotate the current segment")
	}
	res, err := verifyList(path, stale, 0, "")
	if err != nil || !res.OK || len(res.Removed) == 0 {
		t.Fatalf("walk of the stale list = %+v, %v", res, err)
	}
	if !IsSegment(filepath.Join(filepath.Dir(path), stale[0].Name)) || IsSegment(path) {
		t.Fatal("IsSegment")
	}
	if r, err := VerifyLog(filepath.Join(filepath.Dir(path), l.p.segName(stale[len(stale)-2].First, true))); err != nil || !r.OK {
		t.Fatalf("one segment alone: %+v, %v", r, err)
	}
}

func TestLegacyAnchorIsLocated(t *testing.T) {
	// An anchor saved before anchors had a position: found by seq.
	path := filepath.Join(t.TempDir(), "audit.log")
	l := openRot(t, path, Config{MaxSize: 1 << 20, Compress: no(), Keep: -1}, newClock())
	var anchors []Anchor
	l.OnSync(func(a Anchor) { anchors = append(anchors, a) })
	for range 40 { // 40 anchors over about 2 MiB: a few segments
		fill(t, l, 200)
		l.Sync()
	}
	seq, _ := l.Last()
	l.Close()
	if n := len(segNames(t, path)); n < 2 {
		t.Fatalf("%d segments", n)
	}
	for _, a := range anchors {
		got, ok := locate(splitPath(path), mustSegments(t, path), Anchor{Seq: a.Seq, Hash: a.Hash})
		if !ok || got != a {
			t.Fatalf("located %+v, %v; want %+v", got, ok, a)
		}
		res, err := CheckAnchor(path, Anchor{Seq: a.Seq, Hash: a.Hash})
		if err != nil || !res.OK || res.LastSeq != seq || res.Lines != int(seq-a.Seq+1) {
			t.Fatalf("check of legacy anchor %d = %+v, %v; want the tail only", a.Seq, res, err)
		}
	}
	// A seq no line has, or a wrong hash: the whole log is read and the
	// verdict is the full verify's.
	if res, _ := CheckAnchor(path, Anchor{Seq: seq + 5, Hash: Genesis}); res.OK || !strings.Contains(res.Reason, "removed from its end") {
		t.Fatalf("anchor past the end: %+v", res)
	}
	if res, _ := CheckAnchor(path, Anchor{Seq: anchors[3].Seq, Hash: Genesis}); res.OK {
		t.Fatalf("wrong hash: %+v", res)
	}
}

func mustSegments(t *testing.T, path string) []Segment {
	t.Helper()
	segs, err := Segments(path)
	if err != nil {
		t.Fatal(err)
	}
	return segs
}

func TestInterruptedCompressionRedone(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	dir := filepath.Dir(path)
	l := openRot(t, path, Config{MaxSize: 4096, Keep: -1}, newClock())
	fill(t, l, 40)
	segs, _ := Segments(path)
	plain := filepath.Join(dir, segs[0].Name)
	// A crash after the .gz was renamed, before the plain file was
	// removed; and a .gz.tmp of a compression cut short.
	src := mustRead(t, plain)
	var zb bytes.Buffer
	zw := gzip.NewWriter(&zb)
	zw.Write(src[:len(src)/2]) // a wrong .gz: the plain file is what counts
	zw.Close()
	os.WriteFile(plain+".gz", zb.Bytes(), 0o600)
	os.WriteFile(filepath.Join(dir, segs[1].Name+".gz.tmp"), []byte("junk"), 0o600)
	if got := segNames(t, path); got[0] != segs[0].Name {
		t.Fatalf("listed %v; want the plain file while both exist", got)
	}
	mustVerify(t, path)
	if err := l.Maintain(); err != nil {
		t.Fatal(err)
	}
	m, _ := filepath.Glob(filepath.Join(dir, "*.tmp"))
	if len(m) != 0 {
		t.Fatalf("left %v", m)
	}
	if _, err := os.Stat(plain); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("plain file left")
	}
	mustVerify(t, path)
}

func TestSetConfigAppliesToTheNextAppend(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	l := openRot(t, path, Config{}, newClock())
	fill(t, l, 40) // far below 64 MiB: one file
	if n := len(segNames(t, path)); n != 1 {
		t.Fatalf("%d segments", n)
	}
	l.SetConfig(Config{MaxSize: 4096, Keep: 1})
	fill(t, l, 1)
	if n := len(segNames(t, path)); n != 2 {
		t.Fatalf("%d segments after lowering max_size, want 2", n)
	}
	fill(t, l, 40)
	l.Sync()
	if err := l.Maintain(); err != nil {
		t.Fatal(err)
	}
	if res := mustVerify(t, path); len(res.Removed) == 0 {
		t.Fatalf("keep 1 removed nothing: %+v", res)
	}
}

// TestCheckAnchorTornTailAfterTheAnchor: kill -9 during a write leaves a
// torn last line after the anchored one; that is the end of the log (Open
// cuts it, the store's pending records bring back what it held), not a
// break. The same torn line at the end of a closed segment is a break.
func TestCheckAnchorTornTailAfterTheAnchor(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	l := openRot(t, path, Config{MaxSize: 1 << 20, Keep: -1}, newClock())
	var anchor Anchor
	l.OnSync(func(a Anchor) { anchor = a })
	fill(t, l, 10)
	l.Sync()
	a := anchor
	fill(t, l, 5) // written after the anchor, not yet anchored
	l.Sync()
	l.Close()
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString(`{"seq":16,"time":"`)
	f.Close()
	if res, err := CheckAnchor(path, a); err != nil || !res.OK {
		t.Fatalf("torn tail after the anchor counted as a break: %+v, %v", res, err)
	}

	// Rotate past it: the torn line now sits inside a closed segment.
	old := filepath.Join(filepath.Dir(path), "audit-00000000000000000001.log")
	if err := os.Rename(path, old); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if res, _ := CheckAnchor(path, Anchor{Seq: a.Seq, Hash: a.Hash}); res.OK {
		t.Fatalf("a torn line inside a closed segment passed: %+v", res)
	}
}
