package logsource

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/fsnotify/fsnotify"
)

// Defaults of FileOptions.
const (
	DefaultPoll        = 250 * time.Millisecond
	DefaultRotateGrace = time.Second
	// MaxRotateWait bounds how long a rotated file that never goes idle
	// (a writer that never reopens) holds back the new one.
	MaxRotateWait = 30 * time.Second
)

// FileOptions configure a file source.
type FileOptions struct {
	Path string // absolute path of the log file; it need not exist yet
	// Start is the saved position to resume from. Zero: a first start,
	// which begins at the end of the file, Backlog bytes before it, or at
	// the beginning of a file that appears later.
	Start Position
	// Backlog is how far back from the end a first start begins, moved
	// forward to the next line start (-1: the whole file; 0: the end).
	Backlog     int64
	MaxLine     int           // longest line kept; default MaxLine
	Poll        time.Duration // checks without events; default DefaultPoll
	RotateGrace time.Duration // a rotated or deleted file is read until idle this long; default DefaultRotateGrace
	NoNotify    bool          // poll only, no inotify
	Now         func() time.Time
	Logger      *slog.Logger
}

// Line is one line of a file, without its newline.
type Line struct {
	Text string
	Cut  bool     // the line was longer than MaxLine; Text is its first MaxLine bytes
	Path string   // the path the source follows (the line may come from its rotated file)
	Pos  Position // position after this line: save it once the line is handled
	// Start is the offset in Pos's file where the line began.
	Start int64
	Time  time.Time
}

// FileStats are a file source's counters.
type FileStats struct {
	Lines       uint64    `json:"lines"`
	Cut         uint64    `json:"cut"`
	Bytes       uint64    `json:"bytes"`
	Rotations   uint64    `json:"rotations"`   // rename, delete or replacement of the file
	Truncations uint64    `json:"truncations"` // truncation or copytruncate
	Copies      uint64    `json:"copies"`      // truncations whose unread tail was read from logrotate's copy
	Lost        uint64    `json:"lost"`        // resumes whose saved file was gone (its unread tail lost)
	Open        bool      `json:"open"`        // a file is open
	LastLine    time.Time `json:"last_line,omitzero"`
	Err         string    `json:"error,omitempty"` // last error opening or reading, cleared by a successful read
}

// File follows one log file. Run it once (a second Run panics); Stats may
// be called at any time.
type File struct {
	o       FileOptions
	dir     string
	base    string
	buf     []byte
	started chan struct{} // closed once Run has opened the file (or found none)
	mu      sync.Mutex
	stats   FileStats
}

// NewFile checks the options and fills in defaults.
func NewFile(o FileOptions) (*File, error) {
	if !filepath.IsAbs(o.Path) {
		return nil, fmt.Errorf("file source: %q is not an absolute path", o.Path)
	}
	o.Path = filepath.Clean(o.Path)
	if o.MaxLine <= 0 {
		o.MaxLine = MaxLine
	}
	if o.Poll <= 0 {
		o.Poll = DefaultPoll
	}
	if o.RotateGrace <= 0 {
		o.RotateGrace = DefaultRotateGrace
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return &File{o: o, dir: filepath.Dir(o.Path), base: filepath.Base(o.Path), buf: make([]byte, 64<<10), started: make(chan struct{})}, nil
}

// Stats returns a snapshot of the counters.
func (s *File) Stats() FileStats {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stats
}

func (s *File) update(f func(*FileStats)) {
	s.mu.Lock()
	f(&s.stats)
	s.mu.Unlock()
}

// reader is one open file being read.
type reader struct {
	f          *os.File
	dev, ino   uint64
	off        int64 // next byte to read
	pending    []byte
	cut        bool  // the pending line passed MaxLine
	lineStart  int64 // offset of the pending line's first byte
	fpLen      int
	fp         string
	rotated    bool // the path names another file (or none): drain, then switch
	rotatedAt  time.Time
	lastGrowth time.Time
}

func (r *reader) pos() Position {
	return Position{Device: r.dev, Inode: r.ino, Offset: r.off, FPLen: r.fpLen, Fingerprint: r.fp}
}

// Run follows the file until ctx is done, calling emit for every line in
// order, from this goroutine. It returns nil when ctx is done; an
// unreadable or missing file is retried every Poll and shown in Stats.
func (s *File) Run(ctx context.Context, emit func(Line)) error {
	wake, stop := s.watch()
	defer stop()
	tick := time.NewTicker(s.o.Poll)
	defer tick.Stop()
	cur := s.start()
	close(s.started)
	defer func() {
		if cur != nil {
			cur.f.Close()
		}
		s.update(func(st *FileStats) { st.Open = false })
	}()
	for {
		cur = s.step(cur, emit)
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		case <-wake:
		}
	}
}

// start opens the file at the saved position, or as a first start.
func (s *File) start() *reader {
	now := s.o.Now()
	p := s.o.Start
	if p.IsZero() {
		f, err := os.Open(s.o.Path)
		if err != nil {
			s.setErr(err)
			return nil // read from the beginning when it appears
		}
		r, err := s.newReader(f, 0)
		if err != nil {
			return nil
		}
		r.off = s.backlogStart(f)
		return r
	}
	if f, err := os.Open(s.o.Path); err == nil {
		if fi, err := f.Stat(); err == nil {
			if dev, ino := fileID(fi); dev == p.Device && ino == p.Inode {
				// The same file. If it was truncated or rewritten while we
				// were down, the first step finds that (size or fingerprint)
				// and looks for logrotate's copy.
				s.update(func(st *FileStats) { st.Open = true })
				return &reader{f: f, dev: dev, ino: ino, off: p.Offset, fpLen: p.FPLen, fp: p.Fingerprint, lastGrowth: now}
			}
		}
		f.Close()
	}
	// The path names another file or none: logrotate renamed ours.
	if f := s.findSibling(func(fi os.FileInfo, f *os.File) bool {
		dev, ino := fileID(fi)
		if dev != p.Device || ino != p.Inode || fi.Size() < p.Offset {
			return false
		}
		fp, ok, _ := fingerprint(f, p.FPLen)
		return ok && fp == p.Fingerprint
	}); f != nil {
		s.update(func(st *FileStats) { st.Rotations++; st.Open = true })
		return &reader{f: f, dev: p.Device, ino: p.Inode, off: p.Offset, fpLen: p.FPLen, fp: p.Fingerprint,
			rotated: true, rotatedAt: now, lastGrowth: now}
	}
	s.o.Logger.Warn("file source: the saved file is gone; reading the current one from the start", "path", s.o.Path, "inode", p.Inode)
	s.update(func(st *FileStats) { st.Lost++ })
	f, err := os.Open(s.o.Path)
	if err != nil {
		s.setErr(err)
		return nil
	}
	r, _ := s.newReader(f, 0)
	return r
}

// backlogStart is where a first start begins reading f.
func (s *File) backlogStart(f *os.File) int64 {
	fi, err := f.Stat()
	if err != nil {
		return 0
	}
	size := fi.Size()
	switch {
	case s.o.Backlog < 0:
		return 0
	case s.o.Backlog == 0 || size == 0:
		return size
	case s.o.Backlog >= size:
		return 0
	}
	// Begin after the first newline at or after size-Backlog-1, so the
	// first line delivered is whole.
	off := size - s.o.Backlog - 1
	for off < size {
		n, err := f.ReadAt(s.buf, off)
		if i := bytes.IndexByte(s.buf[:n], '\n'); i >= 0 {
			return off + int64(i) + 1
		}
		off += int64(n)
		if err != nil {
			break
		}
	}
	return size
}

func (s *File) newReader(f *os.File, off int64) (*reader, error) {
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		s.setErr(err)
		return nil, err
	}
	dev, ino := fileID(fi)
	r := &reader{f: f, dev: dev, ino: ino, off: off, lastGrowth: s.o.Now()}
	s.refreshFingerprint(r, fi.Size())
	s.update(func(st *FileStats) { st.Open = true })
	return r, nil
}

// step does one round: open the file if none is, handle truncation, read
// what is new, notice rotation and switch files once the old one is idle.
func (s *File) step(cur *reader, emit func(Line)) *reader {
	if cur == nil {
		f, err := os.Open(s.o.Path)
		if err != nil {
			if !errors.Is(err, os.ErrNotExist) {
				s.setErr(err)
			}
			return nil
		}
		if cur, err = s.newReader(f, 0); err != nil {
			return nil
		}
	}
	fi, err := cur.f.Stat()
	if err != nil {
		s.setErr(err)
		return cur
	}
	if !cur.rotated {
		s.checkTruncation(cur, fi.Size(), emit)
		s.refreshFingerprint(cur, fi.Size())
	}
	if s.read(cur, emit) > 0 {
		cur.lastGrowth = s.o.Now()
	}
	if !cur.rotated && s.replaced(cur, fi) {
		cur.rotated, cur.rotatedAt = true, s.o.Now()
		s.update(func(st *FileStats) { st.Rotations++ })
	}
	if cur.rotated {
		now := s.o.Now()
		if now.Sub(cur.lastGrowth) < s.o.RotateGrace && now.Sub(cur.rotatedAt) < MaxRotateWait {
			return cur // the writer may still be writing to it
		}
		s.flush(cur, emit)
		cur.f.Close()
		s.update(func(st *FileStats) { st.Open = false })
		return s.step(nil, emit)
	}
	return cur
}

// replaced reports whether the path no longer names cur's file: deleted,
// renamed away, or replaced by another file.
func (s *File) replaced(cur *reader, fi os.FileInfo) bool {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && st.Nlink == 0 {
		return true
	}
	pfi, err := os.Stat(s.o.Path)
	if err != nil {
		return errors.Is(err, os.ErrNotExist)
	}
	dev, ino := fileID(pfi)
	return dev != cur.dev || ino != cur.ino
}

// checkTruncation notices a file that became shorter than what was read,
// or whose first bytes changed, reads the rest of the old content from
// logrotate's copy when there is one, and starts over at offset 0.
func (s *File) checkTruncation(cur *reader, size int64, emit func(Line)) {
	truncated := size < cur.off
	if !truncated && cur.fpLen > 0 {
		fp, ok, err := fingerprint(cur.f, cur.fpLen)
		if err != nil {
			s.setErr(err)
			return
		}
		truncated = !ok || fp != cur.fp
	}
	if !truncated {
		return
	}
	s.update(func(st *FileStats) { st.Truncations++ })
	if cur.fpLen > 0 {
		if f := s.findSibling(func(fi os.FileInfo, f *os.File) bool {
			dev, ino := fileID(fi)
			if dev == cur.dev && ino == cur.ino || fi.Size() < cur.off {
				return false
			}
			fp, ok, _ := fingerprint(f, cur.fpLen)
			return ok && fp == cur.fp
		}); f != nil {
			// Read the copy as if it were the old content of this file, so
			// the positions stay those of this file.
			old := &reader{f: f, dev: cur.dev, ino: cur.ino, off: cur.off, pending: cur.pending, cut: cur.cut, fpLen: cur.fpLen, fp: cur.fp}
			s.read(old, emit)
			s.flush(old, emit)
			f.Close()
			s.update(func(st *FileStats) { st.Copies++ })
		}
	}
	cur.off, cur.pending, cur.cut, cur.fpLen, cur.fp = 0, cur.pending[:0], false, 0, ""
}

// refreshFingerprint extends the fingerprint while the file is shorter
// than FingerprintBytes.
func (s *File) refreshFingerprint(r *reader, size int64) {
	n := int(min(size, FingerprintBytes))
	if n <= r.fpLen {
		return
	}
	fp, ok, err := fingerprint(r.f, n)
	if err != nil {
		s.setErr(err)
		return
	}
	if ok {
		r.fpLen, r.fp = n, fp
	}
}

// findSibling returns the first file of the directory named like a
// rotation of ours (base.1, base-20261201, not compressed) that ok accepts.
func (s *File) findSibling(ok func(os.FileInfo, *os.File) bool) *os.File {
	ents, err := os.ReadDir(s.dir)
	if err != nil {
		return nil
	}
	for _, e := range ents {
		n := e.Name()
		if !strings.HasPrefix(n, s.base+".") && !strings.HasPrefix(n, s.base+"-") {
			continue
		}
		switch filepath.Ext(n) {
		case ".gz", ".xz", ".bz2", ".zst", ".lz4", ".zip":
			continue
		}
		f, err := os.Open(filepath.Join(s.dir, n))
		if err != nil {
			continue
		}
		fi, err := f.Stat()
		if err == nil && fi.Mode().IsRegular() && ok(fi, f) {
			return f
		}
		f.Close()
	}
	return nil
}

// read reads r to its end, emitting complete lines, and returns the bytes
// read.
func (s *File) read(r *reader, emit func(Line)) int64 {
	var total int64
	for {
		n, err := r.f.ReadAt(s.buf, r.off)
		if n > 0 {
			total += int64(n)
			s.consume(r, s.buf[:n], emit)
		}
		if err != nil && !errors.Is(err, io.EOF) {
			s.setErr(err)
		}
		if n < len(s.buf) || err != nil {
			break
		}
	}
	if total > 0 {
		s.update(func(st *FileStats) { st.Bytes += uint64(total); st.Err = "" })
	}
	return total
}

// consume splits b into lines. The pending line never holds more than
// MaxLine bytes: the rest of a longer line is skipped.
func (s *File) consume(r *reader, b []byte, emit func(Line)) {
	for len(b) > 0 {
		if len(r.pending) == 0 && !r.cut {
			r.lineStart = r.off
		}
		i := bytes.IndexByte(b, '\n')
		seg := b
		if i >= 0 {
			seg = b[:i]
		}
		if room := s.o.MaxLine - len(r.pending); len(seg) > room {
			r.pending = append(r.pending, seg[:room]...)
			r.cut = true
		} else {
			r.pending = append(r.pending, seg...)
		}
		if i < 0 {
			r.off += int64(len(b))
			return
		}
		r.off += int64(i) + 1
		s.deliver(r, emit)
		b = b[i+1:]
	}
}

// flush delivers a last line without a newline, at the end of a file that
// is being left.
func (s *File) flush(r *reader, emit func(Line)) {
	if len(r.pending) > 0 || r.cut {
		s.deliver(r, emit)
	}
}

func (s *File) deliver(r *reader, emit func(Line)) {
	now := s.o.Now()
	text := r.pending
	if !r.cut && len(text) > 0 && text[len(text)-1] == '\r' {
		text = text[:len(text)-1] // a CRLF line ending (sshd -e -E writes them)
	}
	l := Line{Text: string(text), Cut: r.cut, Path: s.o.Path, Pos: r.pos(), Start: r.lineStart, Time: now}
	r.pending, r.cut = r.pending[:0], false
	s.update(func(st *FileStats) {
		st.Lines++
		st.LastLine = now
		if l.Cut {
			st.Cut++
		}
	})
	emit(l)
}

func (s *File) setErr(err error) {
	s.update(func(st *FileStats) { st.Err = err.Error() })
}

// watch wakes Run on inotify events in the file's directory. The events
// are drained by their own goroutine, never by the one that calls the
// watcher. Without inotify (or with NoNotify) the source polls.
func (s *File) watch() (<-chan struct{}, func()) {
	if s.o.NoNotify {
		return nil, func() {}
	}
	w, err := fsnotify.NewWatcher()
	if err != nil {
		s.o.Logger.Warn("file source: no inotify, polling", "path", s.o.Path, "err", err)
		return nil, func() {}
	}
	if err := w.Add(s.dir); err != nil {
		s.o.Logger.Warn("file source: cannot watch the directory, polling", "path", s.o.Path, "err", err)
		w.Close()
		return nil, func() {}
	}
	wake := make(chan struct{}, 1)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case ev, ok := <-w.Events:
				if !ok {
					return
				}
				if strings.HasPrefix(filepath.Base(ev.Name), s.base) {
					select {
					case wake <- struct{}{}:
					default:
					}
				}
			case _, ok := <-w.Errors:
				if !ok {
					return
				}
			}
		}
	}()
	return wake, func() { w.Close(); <-done }
}
