package audit

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Segments. The log whose current file is <dir>/<stem><ext> (audit.log)
// is a chain of segment files: the current one, and older ones named
// <stem>-<seq of their first line, 20 digits><ext> (audit-00000000000000000001.log),
// gzipped to <name>.gz. Names sort in chain order. The first line of every
// segment after the first is a "segment_start" event that chains to the
// last line of the one before and names it (previous, previous_first_seq,
// previous_last_seq, previous_hash).
//
// A rotation writes the new segment's first line to <current>.new, renames
// the current file to its segment name and <current>.new to the current
// name. A crash between the two renames leaves only <current>.new, which
// readers take as the current file and Open renames.

// segDigits is the width of the seq in a segment's name.
const segDigits = 20

// newSuffix names the next current segment during a rotation.
const newSuffix = ".new"

// Segment is one file of the log.
type Segment struct {
	Name       string `json:"name"`      // file name in the log's directory
	First      uint64 `json:"first_seq"` // seq of its first line (0: an empty current file)
	Compressed bool   `json:"compressed,omitempty"`
	Current    bool   `json:"current,omitempty"`
}

// logPath splits the current file's path into the parts segment names are
// made of.
type logPath struct{ dir, stem, ext string }

func splitPath(path string) logPath {
	base := filepath.Base(path)
	ext := filepath.Ext(base)
	return logPath{dir: filepath.Dir(path), stem: strings.TrimSuffix(base, ext), ext: ext}
}

func (p logPath) current() string      { return filepath.Join(p.dir, p.stem+p.ext) }
func (p logPath) file(n string) string { return filepath.Join(p.dir, n) }

// segName is the name of the old segment whose first line has seq first.
func (p logPath) segName(first uint64, gz bool) string {
	n := fmt.Sprintf("%s-%0*d%s", p.stem, segDigits, first, p.ext)
	if gz {
		n += ".gz"
	}
	return n
}

// IsSegment reports whether path names an old segment of a log
// (<stem>-<20 digits><ext>, optionally .gz) rather than a current file.
func IsSegment(path string) bool {
	name := strings.TrimSuffix(filepath.Base(path), ".gz")
	ext := filepath.Ext(name)
	i := strings.LastIndexByte(name, '-')
	if i < 0 {
		return false
	}
	_, _, ok := logPath{stem: name[:i], ext: ext}.parse(filepath.Base(path))
	return ok
}

// parse reads an old segment's name; anything else is not one.
func (p logPath) parse(name string) (first uint64, gz bool, ok bool) {
	rest, ok := strings.CutPrefix(name, p.stem+"-")
	if !ok {
		return 0, false, false
	}
	if r, cut := strings.CutSuffix(rest, ".gz"); cut {
		rest, gz = r, true
	}
	digits, ok := strings.CutSuffix(rest, p.ext)
	if !ok || len(digits) != segDigits || strings.Trim(digits, "0123456789") != "" {
		return 0, false, false
	}
	first, err := strconv.ParseUint(digits, 10, 64)
	return first, gz, err == nil && first > 0
}

// Segments lists the files of the log whose current file is path: old
// segments by first seq, then the current file (or, after a crash between
// the renames of a rotation, the <path>.new that replaces it) if it exists.
// Where a segment is there both plain and gzipped (a crash during
// compression), the plain file is listed.
func Segments(path string) ([]Segment, error) {
	p := splitPath(path)
	ents, err := os.ReadDir(p.dir)
	if err != nil {
		return nil, fmt.Errorf("audit segments: %w", err)
	}
	var segs []Segment
	have := map[uint64]int{}
	for _, e := range ents {
		first, gz, ok := p.parse(e.Name())
		if !ok || !e.Type().IsRegular() {
			continue
		}
		if i, dup := have[first]; dup {
			if !gz {
				segs[i] = Segment{Name: e.Name(), First: first}
			}
			continue
		}
		have[first] = len(segs)
		segs = append(segs, Segment{Name: e.Name(), First: first, Compressed: gz})
	}
	slices.SortFunc(segs, func(a, b Segment) int { return cmpUint(a.First, b.First) })
	for _, name := range []string{p.stem + p.ext, p.stem + p.ext + newSuffix} {
		f, err := os.Open(p.file(name))
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("audit segments: %w", err)
		}
		head, _ := readHead(f, 96)
		f.Close()
		segs = append(segs, Segment{Name: name, First: lineSeq(head), Current: true})
		break
	}
	return segs, nil
}

func cmpUint(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// readHead reads up to n bytes of r's first line (without the newline).
func readHead(r io.Reader, n int) ([]byte, error) {
	b := make([]byte, n)
	m, err := io.ReadFull(r, b)
	if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
		err = nil
	}
	b = b[:m]
	if i := bytes.IndexByte(b, '\n'); i >= 0 {
		b = b[:i]
	}
	return b, err
}

// lineSeq is the seq of an audit line ({"seq":N,...}), 0 if none.
func lineSeq(line []byte) uint64 {
	rest, ok := bytes.CutPrefix(line, []byte(`{"seq":`))
	if !ok {
		return 0
	}
	i := bytes.IndexByte(rest, ',')
	if i < 0 {
		return 0
	}
	n, _ := strconv.ParseUint(string(rest[:i]), 10, 64)
	return n
}

// lineTime is the time of an audit line, read from its head.
func lineTime(line []byte) (time.Time, bool) {
	head := line[:min(len(line), 96)]
	i := bytes.Index(head, []byte(`,"time":"`))
	if i < 0 {
		return time.Time{}, false
	}
	rest := head[i+len(`,"time":"`):]
	j := bytes.IndexByte(rest, '"')
	if j < 0 {
		return time.Time{}, false
	}
	t, err := time.Parse(time.RFC3339Nano, string(rest[:j]))
	return t, err == nil
}

// openSegment opens a segment for reading, decompressing a gzipped one.
// A plain old segment compressed since it was listed is read from its
// .gz.
func openSegment(p logPath, s Segment) (io.ReadCloser, error) {
	f, err := os.Open(p.file(s.Name))
	if errors.Is(err, fs.ErrNotExist) && !s.Current && !s.Compressed && s.First > 0 && p.stem != "" {
		s.Name, s.Compressed = p.segName(s.First, true), true
		f, err = os.Open(p.file(s.Name))
	}
	if err != nil {
		return nil, err
	}
	if !s.Compressed {
		return f, nil
	}
	zr, err := gzip.NewReader(bufio.NewReaderSize(f, 64<<10))
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("%s: %w", s.Name, err)
	}
	return &gzFile{Reader: zr, f: f}, nil
}

type gzFile struct {
	*gzip.Reader
	f *os.File
}

func (g *gzFile) Close() error { return errors.Join(g.Reader.Close(), g.f.Close()) }

// firstLine reads the first line of a segment (at most 64 KiB of it).
func firstLine(p logPath, s Segment) ([]byte, error) {
	r, err := openSegment(p, s)
	if err != nil {
		return nil, err
	}
	defer r.Close()
	return readHead(r, 64<<10)
}

// chainReader reads segments one after the other as one stream of lines
// (a newline is added after a segment that does not end with one).
type chainReader struct {
	p    logPath
	segs []Segment
	skip int64 // bytes to skip at the start of segs[0]
	cur  io.ReadCloser
	last byte
	nl   bool // a newline is owed before the next segment
}

func (c *chainReader) Read(b []byte) (int, error) {
	for {
		if c.nl {
			if len(b) == 0 {
				return 0, nil
			}
			b[0], c.nl, c.last = '\n', false, '\n'
			return 1, nil
		}
		if c.cur == nil {
			if len(c.segs) == 0 {
				return 0, io.EOF
			}
			r, err := openSegment(c.p, c.segs[0])
			if err != nil {
				return 0, fmt.Errorf("read %s: %w", c.segs[0].Name, err)
			}
			if c.skip > 0 {
				if _, err := io.CopyN(io.Discard, r, c.skip); err != nil && !errors.Is(err, io.EOF) {
					r.Close()
					return 0, fmt.Errorf("read %s: %w", c.segs[0].Name, err)
				}
				c.skip = 0
			}
			c.cur, c.last = r, '\n'
		}
		n, err := c.cur.Read(b)
		if n > 0 {
			c.last = b[n-1]
			return n, nil
		}
		if errors.Is(err, io.EOF) {
			c.cur.Close()
			c.cur, c.segs = nil, c.segs[1:]
			c.nl = c.last != '\n'
			continue
		}
		if err != nil {
			return 0, fmt.Errorf("read %s: %w", c.segs[0].Name, err)
		}
	}
}

func (c *chainReader) Close() error {
	c.segs = nil
	if c.cur != nil {
		err := c.cur.Close()
		c.cur = nil
		return err
	}
	return nil
}

func notExist(path string) error {
	return &fs.PathError{Op: "open", Path: path, Err: fs.ErrNotExist}
}

// OpenAll reads every line of the log whose current file is path, across
// its segments, oldest first (gzipped ones decompressed). With no file at
// all, the error is errors.Is(err, fs.ErrNotExist).
func OpenAll(path string) (io.ReadCloser, error) {
	segs, err := Segments(path)
	if err != nil {
		return nil, err
	}
	if len(segs) == 0 {
		return nil, notExist(path)
	}
	return &chainReader{p: splitPath(path), segs: segs}, nil
}

// OpenSince is OpenAll without the old segments closed before t (the first
// line of the segment after them is older than t): what a report of the
// window from t needs. It trusts the lines' times to grow.
func OpenSince(path string, t time.Time) (io.ReadCloser, error) {
	segs, err := Segments(path)
	if err != nil {
		return nil, err
	}
	if len(segs) == 0 {
		return nil, notExist(path)
	}
	p := splitPath(path)
	start := 0
	for j := len(segs) - 1; j > 0; j-- {
		head, err := firstLine(p, segs[j])
		if err != nil {
			break // read from the start; the reader reports the error
		}
		if lt, ok := lineTime(head); ok && lt.Before(t) {
			start = j
			break
		}
	}
	return &chainReader{p: p, segs: segs[start:]}, nil
}

// OpenAfter reads the log from the line a names to its end, across
// segments: the lines after the anchor, with the anchored line first. An
// anchor without a position (Segment 0, saved by an older version), or
// whose segment is gone, starts at the start of the last segment whose
// first seq is at most a.Seq+1. With no file at all, the error is
// errors.Is(err, fs.ErrNotExist).
func OpenAfter(path string, a Anchor) (io.ReadCloser, error) {
	segs, err := Segments(path)
	if err != nil {
		return nil, err
	}
	if len(segs) == 0 {
		return nil, notExist(path)
	}
	c := &chainReader{p: splitPath(path), segs: segs}
	if a.Segment != 0 {
		for i, s := range segs {
			if s.First == a.Segment {
				c.segs, c.skip = segs[i:], a.Offset
				return c, nil
			}
		}
	}
	for i := len(segs) - 1; i >= 0; i-- { // the last segment starting at or before seq+1
		if segs[i].First != 0 && segs[i].First <= a.Seq+1 {
			c.segs = segs[i:]
			break
		}
	}
	return c, nil
}

// syncDir makes the renames and creations in dir durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
