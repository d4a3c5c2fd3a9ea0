package logsource

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/parryhq/parry/test/netns"
)

// collector records what a source emits.
type collector struct {
	mu    sync.Mutex
	lines []Line
}

func (c *collector) emit(l Line) {
	c.mu.Lock()
	c.lines = append(c.lines, l)
	c.mu.Unlock()
}

func (c *collector) n() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.lines)
}

func (c *collector) snapshot() []Line {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]Line(nil), c.lines...)
}

// waitFor polls until the collector has n lines, or fails the test.
func (c *collector) waitFor(t *testing.T, n int) {
	t.Helper()
	if !netns.Poll(20*time.Second, 2*time.Millisecond, func() bool { return c.n() >= n }) {
		t.Fatalf("got %d lines, want %d", c.n(), n)
	}
}

// running is a file source running in the background.
type running struct {
	src  *File
	c    *collector
	stop func()
}

func runFile(t *testing.T, o FileOptions) *running {
	t.Helper()
	if o.Poll == 0 {
		o.Poll = 5 * time.Millisecond
	}
	if o.RotateGrace == 0 {
		o.RotateGrace = 30 * time.Millisecond
	}
	src, err := NewFile(o)
	if err != nil {
		t.Fatal(err)
	}
	c := &collector{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- src.Run(ctx, c.emit) }()
	select {
	case <-src.started:
	case <-time.After(10 * time.Second):
		t.Fatal("source did not start")
	}
	var once sync.Once
	r := &running{src: src, c: c, stop: func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("Run: %v", err)
				}
			case <-time.After(10 * time.Second):
				t.Errorf("Run did not return after cancel")
			}
		})
	}}
	t.Cleanup(r.stop)
	return r
}

// bothModes runs a test with inotify and with polling only.
func bothModes(t *testing.T, f func(*testing.T, bool)) {
	t.Run("inotify", func(t *testing.T) { f(t, false) })
	t.Run("poll", func(t *testing.T) { f(t, true) })
}

func line(i int) string { return fmt.Sprintf("line %06d some text of a log line", i) }

// checkExact asserts the lines are line(from)..line(to-1), each once, in order.
func checkExact(t *testing.T, got []Line, from, to int) {
	t.Helper()
	if len(got) != to-from {
		t.Errorf("got %d lines, want %d", len(got), to-from)
	}
	seen := map[string]int{}
	for _, l := range got {
		seen[l.Text]++
	}
	for i := from; i < to; i++ {
		switch seen[line(i)] {
		case 0:
			t.Errorf("line %d lost", i)
		case 1:
		default:
			t.Errorf("line %d delivered %d times", i, seen[line(i)])
		}
	}
	for i, l := range got {
		if i < len(got) && i+from < to && l.Text != line(from+i) {
			t.Errorf("line %d out of order: %q", from+i, l.Text)
			break
		}
	}
}

type writer struct {
	t    *testing.T
	path string
	f    *os.File
	next int
}

func newWriter(t *testing.T, path string) *writer {
	w := &writer{t: t, path: path}
	w.reopen()
	t.Cleanup(func() { w.f.Close() })
	return w
}

func (w *writer) reopen() {
	if w.f != nil {
		w.f.Close()
	}
	f, err := os.OpenFile(w.path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		w.t.Fatal(err)
	}
	w.f = f
}

func (w *writer) write(n int) {
	var b strings.Builder
	for range n {
		b.WriteString(line(w.next))
		b.WriteByte('\n')
		w.next++
		if b.Len() > 4096 {
			w.flush(&b)
		}
	}
	w.flush(&b)
}

func (w *writer) flush(b *strings.Builder) {
	if _, err := w.f.WriteString(b.String()); err != nil {
		w.t.Fatal(err)
	}
	b.Reset()
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// TestFileRenameCreate: logrotate's default (rename, create, then the
// daemon reopens): the writer goes on writing to the renamed file for a
// while, as nginx does until USR1. Every line arrives once, in order.
func TestFileRenameCreate(t *testing.T) { bothModes(t, testFileRenameCreate) }

func testFileRenameCreate(t *testing.T, noNotify bool) {
	dir := t.TempDir()
	path := filepath.Join(dir, "auth.log")
	w := newWriter(t, path)
	r := runFile(t, FileOptions{Path: path, Backlog: -1, NoNotify: noNotify})
	for round := range 3 {
		// One rotation at a time: the previous one has been followed
		// (rotations closer than RotateGrace may skip a file, see docs).
		r.c.waitFor(t, w.next)
		w.write(500)
		if round == 1 {
			// a second rotation shifts the first rotated file away
			must(t, os.Rename(path+".1", path+".2"))
		}
		must(t, os.Rename(path, path+".1"))
		w.write(50) // still into the renamed file
		must(t, os.WriteFile(path, nil, 0o644))
		w.reopen()
		w.write(200)
	}
	r.c.waitFor(t, w.next)
	r.stop()
	checkExact(t, r.c.snapshot(), 0, w.next)
	if st := r.src.Stats(); st.Rotations != 3 {
		t.Errorf("rotations = %d, want 3", st.Rotations)
	}
}

// TestFileCopyTruncate: logrotate's copytruncate. The lines the source had
// not read when the file was truncated are read from the copy.
func TestFileCopyTruncate(t *testing.T) { bothModes(t, testFileCopyTruncate) }

func testFileCopyTruncate(t *testing.T, noNotify bool) {
	dir := t.TempDir()
	path := filepath.Join(dir, "app.log")
	w := newWriter(t, path)
	r := runFile(t, FileOptions{Path: path, Backlog: -1, NoNotify: noNotify})
	for round := range 4 {
		w.write(700)
		// At most one copytruncate between two looks of the source (as
		// with a daily logrotate): wait until it has read some of this round.
		r.c.waitFor(t, w.next-600)
		b, err := os.ReadFile(path)
		must(t, err)
		must(t, os.WriteFile(path+".1", b, 0o644))
		must(t, w.f.Truncate(0))
		w.write(100 + 300*round) // the new content may outgrow the old offset
	}
	r.c.waitFor(t, w.next)
	r.stop()
	checkExact(t, r.c.snapshot(), 0, w.next)
	if st := r.src.Stats(); st.Truncations != 4 {
		t.Errorf("truncations = %d, want 4", st.Truncations)
	}
}

// TestFileTruncate: truncated in place (no copy) and rewritten past the
// old offset before the source looks: the fingerprint shows the change and
// the new content is read from its start.
func TestFileTruncate(t *testing.T) { bothModes(t, testFileTruncate) }

func testFileTruncate(t *testing.T, noNotify bool) {
	dir := t.TempDir()
	path := filepath.Join(dir, "app.log")
	w := newWriter(t, path)
	r := runFile(t, FileOptions{Path: path, Backlog: -1, NoNotify: noNotify})
	for range 3 {
		w.write(100)
		// What was in the file when it was truncated is gone for anyone;
		// wait until the source has it, then truncate and write more than before.
		r.c.waitFor(t, w.next)
		must(t, w.f.Truncate(0))
		w.write(300)
	}
	r.c.waitFor(t, w.next)
	r.stop()
	checkExact(t, r.c.snapshot(), 0, w.next)
	if st := r.src.Stats(); st.Truncations != 3 {
		t.Errorf("truncations = %d, want 3", st.Truncations)
	}
}

// TestFileDeleteRecreate: deleted and created again while being written.
// The deleted file is read to its end through the open descriptor.
func TestFileDeleteRecreate(t *testing.T) { bothModes(t, testFileDeleteRecreate) }

func testFileDeleteRecreate(t *testing.T, noNotify bool) {
	dir := t.TempDir()
	path := filepath.Join(dir, "app.log")
	w := newWriter(t, path)
	r := runFile(t, FileOptions{Path: path, Backlog: -1, NoNotify: noNotify})
	for range 3 {
		r.c.waitFor(t, w.next) // one deletion at a time, as in TestFileRenameCreate
		w.write(400)
		must(t, os.Remove(path))
		w.write(20) // into the deleted file
		w.reopen()  // creates it again
		w.write(400)
	}
	r.c.waitFor(t, w.next)
	r.stop()
	checkExact(t, r.c.snapshot(), 0, w.next)
}

// TestFileNotExistYet: a file that appears after the source started is
// read from its first line; so is one in a directory that appears later.
func TestFileNotExistYet(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "later.log")
	r := runFile(t, FileOptions{Path: path})
	w := newWriter(t, path)
	w.write(300)
	r.c.waitFor(t, w.next)

	path2 := filepath.Join(dir, "sub", "x.log")
	r2 := runFile(t, FileOptions{Path: path2})
	must(t, os.Mkdir(filepath.Join(dir, "sub"), 0o755))
	w2 := newWriter(t, path2)
	w2.write(10)
	r2.c.waitFor(t, 10)
	r.stop()
	r2.stop()
	checkExact(t, r.c.snapshot(), 0, 300)
	checkExact(t, r2.c.snapshot(), 0, 10)
}

// TestFileResume: a source started from the position saved with line k
// delivers exactly the lines after k, whatever happened to the file while
// it was stopped.
func TestFileResume(t *testing.T) {
	for _, tc := range []struct {
		name  string
		while func(t *testing.T, w *writer) // what happens while the source is down
		lost  uint64
	}{
		{"appended", func(t *testing.T, w *writer) { w.write(50) }, 0},
		{"renamed", func(t *testing.T, w *writer) {
			w.write(10)
			must(t, os.Rename(w.path, w.path+".1"))
			w.reopen()
			w.write(40)
		}, 0},
		{"copytruncate", func(t *testing.T, w *writer) {
			w.write(10)
			b, err := os.ReadFile(w.path)
			must(t, err)
			must(t, os.WriteFile(w.path+".1", b, 0o644))
			must(t, w.f.Truncate(0))
			w.write(40)
		}, 0},
		{"rotated and compressed", func(t *testing.T, w *writer) {
			// the unread tail of the old file is lost: counted, and the new file read whole
			must(t, os.Rename(w.path, w.path+".1.gz"))
			w.reopen()
			w.write(50)
		}, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "auth.log")
			w := newWriter(t, path)
			w.write(100)
			r := runFile(t, FileOptions{Path: path, Backlog: -1})
			r.c.waitFor(t, 100)
			r.stop()
			const k = 60 // the caller handled lines 0..59 and saved the position of 59
			saved := r.c.snapshot()[k-1].Pos
			if saved.Offset != int64(k*(len(line(0))+1)) || saved.FPLen != FingerprintBytes || saved.Inode == 0 {
				t.Fatalf("position %+v", saved)
			}
			tc.while(t, w)
			r2 := runFile(t, FileOptions{Path: path, Start: saved})
			want := 150 - k
			if tc.lost > 0 {
				want = 50
			}
			r2.c.waitFor(t, want)
			r2.stop()
			if tc.lost > 0 {
				checkExact(t, r2.c.snapshot(), 100, 150)
			} else {
				checkExact(t, r2.c.snapshot(), k, 150)
			}
			if st := r2.src.Stats(); st.Lost != tc.lost {
				t.Errorf("lost = %d, want %d", st.Lost, tc.lost)
			}
		})
	}
}

// TestFileResumeDuringRotation: the position saved while the rotated file
// was being drained resumes in that file, then goes on with the new one.
func TestFileResumeDuringRotation(t *testing.T) {
	path := filepath.Join(t.TempDir(), "auth.log")
	w := newWriter(t, path)
	w.write(100)
	r := runFile(t, FileOptions{Path: path, Backlog: -1, RotateGrace: time.Hour})
	r.c.waitFor(t, 100)
	must(t, os.Rename(path, path+".1"))
	w.write(20) // the old file grows after the rename
	w.reopen()
	w.write(30) // the new file is held back for the grace period
	r.c.waitFor(t, 120)
	r.stop()
	got := r.c.snapshot()
	checkExact(t, got, 0, 120)
	saved := got[109].Pos
	r2 := runFile(t, FileOptions{Path: path, Start: saved})
	r2.c.waitFor(t, 40)
	r2.stop()
	checkExact(t, r2.c.snapshot(), 110, 150)
}

// TestFileLongLine: a line longer than MaxLine is cut, counted and not
// buffered; the lines around it are whole, the positions exact.
func TestFileLongLine(t *testing.T) {
	path := filepath.Join(t.TempDir(), "app.log")
	long := strings.Repeat("x", 300<<10)
	must(t, os.WriteFile(path, []byte("a\n"+long+"\nb\nc"), 0o644))
	r := runFile(t, FileOptions{Path: path, Backlog: -1, MaxLine: 1024})
	r.c.waitFor(t, 3)
	got := r.c.snapshot()
	if len(got) != 3 || got[0].Text != "a" || got[1].Text != long[:1024] || !got[1].Cut || got[2].Text != "b" || got[0].Cut || got[2].Cut {
		t.Fatalf("lines %d: %q %v / %d bytes %v / %q", len(got), got[0].Text, got[0].Cut, len(got[1].Text), got[1].Cut, got[2].Text)
	}
	if got[2].Pos.Offset != int64(2+len(long)+1+2) {
		t.Errorf("offset after b = %d", got[2].Pos.Offset)
	}
	if st := r.src.Stats(); st.Cut != 1 || st.Lines != 3 {
		t.Errorf("stats %+v", st)
	}
	// "c" has no newline yet: it is delivered when it gets one.
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	must(t, err)
	_, err = io.WriteString(f, "\n")
	must(t, err)
	f.Close()
	r.c.waitFor(t, 4)
	if got := r.c.snapshot()[3].Text; got != "c" {
		t.Errorf("last line %q", got)
	}
}

// TestFileBacklog: a first start begins Backlog bytes before the end, at a
// line start.
func TestFileBacklog(t *testing.T) {
	path := filepath.Join(t.TempDir(), "app.log")
	w := newWriter(t, path)
	w.write(100)
	n := len(line(0)) + 1
	r := runFile(t, FileOptions{Path: path, Backlog: int64(10*n + 5)})
	w.write(5)
	r.c.waitFor(t, 15)
	r.stop()
	checkExact(t, r.c.snapshot(), 90, 105)

	r2 := runFile(t, FileOptions{Path: path}) // from the end
	w.write(3)
	r2.c.waitFor(t, 3)
	r2.stop()
	checkExact(t, r2.c.snapshot(), 105, 108)
}

func TestPositionJSON(t *testing.T) {
	p := Position{Device: 2049, Inode: 1234, Offset: 99, FPLen: 1024, Fingerprint: "ab12"}
	b, err := json.Marshal(p)
	must(t, err)
	if string(b) != `{"dev":2049,"inode":1234,"offset":99,"fp_len":1024,"fp":"ab12"}` {
		t.Errorf("json %s", b)
	}
	var q Position
	must(t, json.Unmarshal(b, &q))
	if q != p || q.IsZero() || !(Position{}).IsZero() {
		t.Errorf("round trip %+v", q)
	}
}

// TestFileUnreadable: a path that cannot be read as a log (here a
// directory) is an error in Stats and retried; once a file is there it is
// read from its start.
func TestFileUnreadable(t *testing.T) {
	path := filepath.Join(t.TempDir(), "app.log")
	must(t, os.Mkdir(path, 0o755))
	r := runFile(t, FileOptions{Path: path})
	if !netns.Poll(10*time.Second, 2*time.Millisecond, func() bool { return r.src.Stats().Err != "" }) {
		t.Fatalf("no error in stats: %+v", r.src.Stats())
	}
	must(t, os.Remove(path))
	w := newWriter(t, path)
	w.write(5)
	r.c.waitFor(t, 5)
	r.stop()
	checkExact(t, r.c.snapshot(), 0, 5)
	if st := r.src.Stats(); st.Err != "" {
		t.Errorf("error not cleared: %q", st.Err)
	}
}

// TestFileCRLFAndStart: a CRLF line ending (sshd -e -E writes them) is
// delivered without its \r, and every line says where it began.
func TestFileCRLFAndStart(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sshd.log")
	must(t, os.WriteFile(path, nil, 0o644))
	r := runFile(t, FileOptions{Path: path})
	f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	must(t, err)
	defer f.Close()
	_, err = f.WriteString("Failed password for root from 192.0.2.2 port 4000 ssh2\r\nsecond\n\r\n")
	must(t, err)
	r.c.waitFor(t, 3)
	got := r.c.snapshot()
	want := []struct {
		text       string
		start, end int64
	}{{"Failed password for root from 192.0.2.2 port 4000 ssh2", 0, 56}, {"second", 56, 63}, {"", 63, 65}}
	for i, w := range want {
		if got[i].Text != w.text || got[i].Start != w.start || got[i].Pos.Offset != w.end {
			t.Errorf("line %d: %q start %d end %d, want %q %d %d", i, got[i].Text, got[i].Start, got[i].Pos.Offset, w.text, w.start, w.end)
		}
	}
}
