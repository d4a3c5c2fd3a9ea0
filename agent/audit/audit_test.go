package audit

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

func fixedNow() time.Time { return time.Date(2026, 11, 27, 0, 0, 0, 0, time.UTC) }

func writeLog(t *testing.T, n int) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "audit.log")
	l, err := Open(path, fixedNow)
	if err != nil {
		t.Fatal(err)
	}
	for i := range n {
		if err := l.Append("block", map[string]any{"i": i, "targets": []string{"203.0.113.7"}}); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestChainVerifiesAndContinuesAcrossReopen(t *testing.T) {
	path := writeLog(t, 3)
	l, err := Open(path, fixedNow)
	if err != nil {
		t.Fatal(err)
	}
	if l.Seq() != 3 {
		t.Fatalf("reopened seq = %d, want 3", l.Seq())
	}
	if err := l.Append("unblock", nil); err != nil {
		t.Fatal(err)
	}
	l.Close()
	res, err := VerifyFile(path)
	if err != nil || !res.OK || res.Lines != 4 || res.LastSeq != 4 {
		t.Fatalf("verify = %+v, %v", res, err)
	}
}

func TestTamperDetected(t *testing.T) {
	tests := []struct {
		name    string
		tamper  func(lines []string) []string
		badLine int
	}{
		{"edit a field", func(l []string) []string {
			l[2] = strings.Replace(l[2], "203.0.113.7", "203.0.113.8", 1)
			return l
		}, 3},
		{"delete a line", func(l []string) []string { return append(l[:1], l[2:]...) }, 2},
		{"swap lines", func(l []string) []string { l[1], l[2] = l[2], l[1]; return l }, 2},
		{"recompute the hash of an edited line", func(l []string) []string {
			// an attacker who edits and re-hashes one line still breaks the next link
			l[1] = strings.Replace(l[1], `"i":1`, `"i":9`, 1)
			body := l[1][:strings.LastIndex(l[1], `,"hash":"`)] + "}"
			l[1] = body[:len(body)-1] + `,"hash":"` + hashOf([]byte(body)) + `"}`
			return l
		}, 3},
		{"truncate the last line", func(l []string) []string { l[4] = l[4][:20]; return l }, 5},
		{"garbage line", func(l []string) []string { l[0] = "hello"; return l }, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := writeLog(t, 5)
			b, _ := os.ReadFile(path)
			lines := strings.Split(strings.TrimSuffix(string(b), "\n"), "\n")
			out := strings.Join(tt.tamper(lines), "\n") + "\n"
			res, err := Verify(bytes.NewReader([]byte(out)))
			if err != nil {
				t.Fatal(err)
			}
			if res.OK || res.FirstBad != tt.badLine {
				t.Fatalf("verify = %+v, want first bad line %d", res, tt.badLine)
			}
		})
	}
}

func TestIntactLogOK(t *testing.T) {
	res, err := VerifyFile(writeLog(t, 50))
	if err != nil || !res.OK || res.Lines != 50 {
		t.Fatalf("%+v %v", res, err)
	}
}

// TestAppendRaw: an event appended with Raw fields is the same line as one
// appended with the value those bytes encode.
func TestAppendRaw(t *testing.T) {
	now := func() time.Time { return time.Date(2026, 11, 27, 1, 0, 0, 0, time.UTC) }
	fields := map[string]any{"count": 2, "x": "<a&b>", "é": []int{1}}
	raw, _ := json.Marshal(fields)
	var lines [2][]byte
	for i, f := range []any{fields, Raw(raw)} {
		path := filepath.Join(t.TempDir(), "audit.log")
		l, err := Open(path, now)
		if err != nil {
			t.Fatal(err)
		}
		if err := l.Append("ev\"<", f); err != nil {
			t.Fatal(err)
		}
		l.Close()
		if lines[i], err = os.ReadFile(path); err != nil {
			t.Fatal(err)
		}
		if res, err := Verify(bytes.NewReader(lines[i])); err != nil || !res.OK {
			t.Fatalf("verify: %v %+v", err, res)
		}
	}
	if string(lines[0]) != string(lines[1]) {
		t.Errorf("raw:\n%s\nencoded:\n%s", lines[1], lines[0])
	}
}

func TestVerifyMissingFileIsAnError(t *testing.T) {
	_, err := VerifyFile(filepath.Join(t.TempDir(), "nope.log"))
	if !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("missing file: err = %v, want ErrNotExist (never an intact log)", err)
	}
}

// The writer's checkpoint (Log.Last) catches what the chain alone cannot:
// a log deleted, cut off at its end, or rewritten from scratch.
func TestVerifyAgainstWriterCheckpoint(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	l, err := Open(path, fixedNow)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	for i := range 5 {
		if err := l.Append("block", map[string]any{"i": i}); err != nil {
			t.Fatal(err)
		}
	}
	seq, hash := l.Last()
	if res, err := VerifyFileAgainst(path, seq, hash); err != nil || !res.OK || res.LastSeq != 5 {
		t.Fatalf("intact log: %+v, %v", res, err)
	}
	orig, _ := os.ReadFile(path)
	lines := strings.SplitAfter(string(orig), "\n")

	// Cut off the last two lines: the chain alone is still fine.
	if err := os.WriteFile(path, []byte(strings.Join(lines[:3], "")), 0o600); err != nil {
		t.Fatal(err)
	}
	if res, _ := VerifyFile(path); !res.OK {
		t.Fatalf("a cut-off log is a valid chain by itself: %+v", res)
	}
	if res, err := VerifyFileAgainst(path, seq, hash); err != nil || res.OK || !strings.Contains(res.Reason, "removed from its end") {
		t.Fatalf("cut-off log: %+v, %v", res, err)
	}

	// Rewritten from scratch with a consistent chain and other content.
	other := writeLog(t, 5)
	b, _ := os.ReadFile(other)
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	if res, err := VerifyFileAgainst(path, seq, hash); err != nil || res.OK || res.FirstBad != 5 {
		t.Fatalf("rewritten log: %+v, %v", res, err)
	}

	// Deleted.
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if res, err := VerifyFileAgainst(path, seq, hash); err != nil || res.OK || !strings.Contains(res.Reason, "missing") {
		t.Fatalf("deleted log: %+v, %v", res, err)
	}
}

func TestOnSyncReportsDurableLineOnlyAfterFsync(t *testing.T) {
	l, err := Open(filepath.Join(t.TempDir(), "audit.log"), time.Now)
	if err != nil {
		t.Fatal(err)
	}
	var got []uint64
	var hashes []string
	l.OnSync(func(a Anchor) { got, hashes = append(got, a.Seq), append(hashes, a.Hash) })
	for range 3 {
		if err := l.Append("x", nil); err != nil {
			t.Fatal(err)
		}
	}
	if len(got) != 0 {
		t.Fatalf("OnSync called before any fsync: %v", got)
	}
	if err := l.Sync(); err != nil {
		t.Fatal(err)
	}
	if err := l.Sync(); err != nil { // nothing new: no call
		t.Fatal(err)
	}
	if err := l.Append("y", nil); err != nil {
		t.Fatal(err)
	}
	seq, hash := l.Last()
	if err := l.Close(); err != nil { // a clean close anchors the tail
		t.Fatal(err)
	}
	if len(got) != 2 || got[0] != 3 || got[1] != 4 || hashes[1] != hash || seq != 4 {
		t.Fatalf("OnSync calls %v, want [3 4] with the last hash", got)
	}
}

// faultFile injects failures into the audit log's file: a write of at most
// short bytes followed by writeErr, a failing Truncate, a failing Sync.
type faultFile struct {
	File
	writeErr error
	short    int // bytes a failing write still writes
	truncErr error
	syncErr  error
}

func (f *faultFile) Write(b []byte) (int, error) {
	if f.writeErr == nil {
		return f.File.Write(b)
	}
	n, _ := f.File.Write(b[:min(f.short, len(b))])
	return n, f.writeErr
}

func (f *faultFile) Truncate(n int64) error {
	if f.truncErr != nil {
		return f.truncErr
	}
	return f.File.Truncate(n)
}

func (f *faultFile) Sync() error {
	if f.syncErr != nil {
		return f.syncErr
	}
	return f.File.Sync()
}

func openFault(t *testing.T, path string) (*Log, *faultFile) {
	t.Helper()
	var ff *faultFile
	l, err := OpenWith(path, fixedNow, func(f File) File { ff = &faultFile{File: f}; return ff })
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l, ff
}

func verifyOK(t *testing.T, path string, lines int) {
	t.Helper()
	res, err := VerifyFile(path)
	if err != nil || !res.OK || res.Lines != lines || res.LastSeq != uint64(lines) {
		t.Fatalf("verify = %+v, %v; want %d intact lines", res, err, lines)
	}
}

func TestFailedWriteLeavesNoLine(t *testing.T) {
	path := writeLog(t, 3)
	l, ff := openFault(t, path)
	ff.writeErr, ff.short = syscall.ENOSPC, 20 // a short write, then ENOSPC
	err := l.Append("block", map[string]any{"targets": []string{"203.0.113.9"}})
	if !errors.Is(err, ErrFailed) || !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("append on a full disk = %v, want ErrFailed wrapping ENOSPC", err)
	}
	if f := l.Failure(); f == nil || f.Op != "write" || f.Count != 1 {
		t.Fatalf("Failure() = %+v, want a write failure", f)
	}
	if l.Seq() != 3 {
		t.Fatalf("seq after a failed append = %d, want 3", l.Seq())
	}
	verifyOK(t, path, 3) // the partial line was cut off at once

	// The cut fails too: the torn tail stays until the next write cuts it.
	ff.truncErr = errors.New("injected truncate failure")
	if err := l.Append("block", nil); !errors.Is(err, ErrFailed) {
		t.Fatalf("append = %v, want ErrFailed", err)
	}
	if res, _ := VerifyFile(path); res.OK {
		t.Fatal("the torn tail should still be in the file")
	}
	ff.writeErr, ff.truncErr = nil, nil // space returns
	if err := l.Append("unblock", nil); err != nil {
		t.Fatal(err)
	}
	if f := l.Failure(); f != nil {
		t.Fatalf("Failure() after a good append = %+v, want nil", f)
	}
	verifyOK(t, path, 4)
}

func TestAppendAllIsAllOrNothing(t *testing.T) {
	path := writeLog(t, 1)
	l, ff := openFault(t, path)
	ff.writeErr, ff.short = syscall.ENOSPC, 300 // more than one line
	evs := []Event{{"block", map[string]any{"i": 1}}, {"block", map[string]any{"i": 2}}, {"block", map[string]any{"i": 3}}}
	if _, err := l.AppendAll(evs...); !errors.Is(err, ErrFailed) {
		t.Fatalf("AppendAll = %v", err)
	}
	verifyOK(t, path, 1)
	ff.writeErr = nil
	seq, err := l.AppendAll(evs...)
	if err != nil || seq != 4 {
		t.Fatalf("AppendAll = %d, %v; want seq 4", seq, err)
	}
	verifyOK(t, path, 4)
}

func TestFailedSyncFailsAppendsUntilItSucceeds(t *testing.T) {
	path := writeLog(t, 1)
	l, ff := openFault(t, path)
	if err := l.Append("block", nil); err != nil {
		t.Fatal(err)
	}
	ff.syncErr = syscall.EIO
	if err := l.Sync(); !errors.Is(err, syscall.EIO) {
		t.Fatalf("Sync = %v, want EIO", err)
	}
	if f := l.Failure(); f == nil || f.Op != "sync" {
		t.Fatalf("Failure() = %+v, want a sync failure", f)
	}
	if err := l.Append("block", nil); !errors.Is(err, ErrFailed) || !errors.Is(err, syscall.EIO) {
		t.Fatalf("append while sync fails = %v, want ErrFailed wrapping EIO", err)
	}
	ff.syncErr = nil
	if err := l.Append("block", nil); err != nil {
		t.Fatal(err)
	}
	if f := l.Failure(); f != nil {
		t.Fatalf("Failure() = %+v, want nil", f)
	}
	verifyOK(t, path, 3)
}

func TestTornTailCutAtOpen(t *testing.T) {
	for _, torn := range []string{`{"seq":4,"time":"`, strings.Repeat("x", 200<<10)} {
		path := writeLog(t, 3)
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
		if err != nil {
			t.Fatal(err)
		}
		f.WriteString(torn)
		f.Close()
		l, err := Open(path, fixedNow)
		if err != nil {
			t.Fatal(err)
		}
		if l.Seq() != 3 {
			t.Fatalf("seq after a torn tail = %d, want 3", l.Seq())
		}
		if err := l.Append("block", nil); err != nil {
			t.Fatal(err)
		}
		l.Close()
		verifyOK(t, path, 4)
	}
}

func TestTornOnlyLineCutAtOpen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	os.WriteFile(path, []byte(`{"seq":1,"ti`), 0o600)
	l, err := Open(path, fixedNow)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Append("start", nil); err != nil {
		t.Fatal(err)
	}
	l.Close()
	verifyOK(t, path, 1)
}
