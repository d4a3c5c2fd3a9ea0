package audit

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
)

// Anchor names a line known durable: its seq and hash, and where it is —
// the segment (by the seq of its first line) and the byte offset of the
// line in it. The daemon saves it in its store after each fsync (OnSync)
// and checks it at the next start (CheckAnchor) in time independent of
// the log's length.
type Anchor struct {
	Seq  uint64 `json:"seq"`
	Hash string `json:"hash"`
	// Segment is the first seq of the segment file holding the line; 0:
	// not known (an anchor saved by a version without segments).
	Segment uint64 `json:"segment,omitempty"`
	// Offset is the byte offset of the line in that segment (uncompressed).
	Offset int64 `json:"offset,omitempty"`
}

// CheckAnchor checks the log whose current file is path against a, reading
// only the anchored line and what follows it: the line at a.Offset of
// segment a.Segment must be seq a.Seq with hash a.Hash, and the chain from
// it to the end of the current segment must hold (lines after it in the
// same segment and in later ones, with nothing missing). It costs the same
// with a gigabyte of history as with none; an edit to a line before the
// anchor is found by VerifyFile, not here. A log cut before the anchored
// line, deleted, or rewritten fails. An anchor without a position (saved
// by a version without segments) is located by a binary search on seq in
// its plain segment; when that fails, or the anchor's segment is gone, the
// check falls back to VerifyFileAgainst (the whole log).
//
// Line numbers in the result (FirstBad, Lines) count from the anchored
// line.
func CheckAnchor(path string, a Anchor) (Result, error) {
	if a.Seq == 0 {
		return Result{OK: true}, nil
	}
	segs, err := Segments(path)
	if err != nil {
		return Result{}, fmt.Errorf("audit anchor: %w", err)
	}
	if a.Segment == 0 {
		var ok bool
		if a, ok = locate(splitPath(path), segs, a); !ok {
			return VerifyFileAgainst(path, a.Seq, a.Hash)
		}
	}
	if len(segs) == 0 {
		return Result{FirstBad: 1, File: filepath.Base(path), Reason: fmt.Sprintf("the audit log is missing, but parryd has written %d lines to it: it was deleted or moved", a.Seq)}, nil
	}
	at := -1
	for i, s := range segs {
		if s.First == a.Segment {
			at = i
		}
	}
	if at < 0 {
		return VerifyFileAgainst(path, a.Seq, a.Hash)
	}
	p := splitPath(path)
	s := segs[at]
	res := Result{FirstBad: 1, File: s.Name}
	r, err := openSegment(p, s)
	if err != nil {
		if s.Compressed && !errors.Is(err, fs.ErrNotExist) {
			res.Reason = fmt.Sprintf("%s does not decompress: %v", s.Name, err)
			return res, nil
		}
		return Result{}, fmt.Errorf("audit anchor: %w", err)
	}
	ok, why, err := skipTo(r, s, a.Offset)
	if err != nil {
		r.Close()
		return Result{}, fmt.Errorf("audit anchor: read %s: %w", s.Name, err)
	}
	if !ok {
		r.Close()
		res.Reason = fmt.Sprintf("%s: seq %d, which parryd had made durable at byte %d, is not there: %s", s.Name, a.Seq, a.Offset, why)
		return res, nil
	}
	v := newVerifier(a.Seq, a.Hash)
	v.noGaps, v.anchored = true, true
	if last := segs[len(segs)-1]; last.Current {
		v.tornOK = last.Name
	}
	good, err := v.segment(r, s.Name, s.Compressed)
	r.Close()
	if err != nil {
		return v.res, err
	}
	if !good {
		return v.finish(), nil
	}
	v.last, v.lastLines = s, v.res.Lines
	if v.res.Lines == 0 {
		v.res.OK, v.res.FirstBad, v.res.File = false, 1, s.Name
		v.res.Reason = fmt.Sprintf("the log ends before seq %d (byte %d of %s), which parryd had made durable: lines were removed from its end", a.Seq, a.Offset, s.Name)
		return v.res, nil
	}
	return v.walk(p, segs[at+1:])
}

// skipTo reads r up to offset, which must be the start of a line: at the
// start of the file or just after a newline. why says what is wrong when
// it is not.
func skipTo(r io.Reader, s Segment, offset int64) (ok bool, why string, err error) {
	if offset == 0 {
		return true, "", nil
	}
	if f, plain := r.(*os.File); plain && !s.Compressed {
		st, err := f.Stat()
		if err != nil {
			return false, "", err
		}
		if st.Size() <= offset {
			return false, fmt.Sprintf("the file ends at byte %d: lines were removed from its end", st.Size()), nil
		}
		var b [1]byte
		if _, err := f.ReadAt(b[:], offset-1); err != nil {
			return false, "", err
		}
		if b[0] != '\n' {
			return false, "no line starts there: the log was replaced or rewritten", nil
		}
		_, err = f.Seek(offset, io.SeekStart)
		return err == nil, "", err
	}
	n, err := io.CopyN(io.Discard, r, offset-1)
	if errors.Is(err, io.EOF) {
		return false, fmt.Sprintf("the segment ends at byte %d: lines were removed from its end", n), nil
	}
	if err != nil {
		return false, "", err
	}
	var b [1]byte
	if _, err := io.ReadFull(r, b[:]); err != nil {
		return false, "the segment ends there: lines were removed from its end", nil
	}
	if b[0] != '\n' {
		return false, "no line starts there: the log was replaced or rewritten", nil
	}
	return true, "", nil
}

// KeepBroken moves the whole log whose current file is path aside, never
// deleting it: every file of it gets the suffix "."+suffix (audit.log →
// audit.log.broken-<time>, its old segments likewise), so that a new
// chain can start at seq 1. It returns the kept name of the current file,
// or of the newest old segment when there was no current file, or "" when
// there was nothing.
func KeepBroken(path, suffix string) (string, error) {
	segs, err := Segments(path)
	if err != nil {
		return "", err
	}
	p := splitPath(path)
	kept := ""
	for _, s := range segs {
		if err := os.Rename(p.file(s.Name), p.file(s.Name+"."+suffix)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return "", fmt.Errorf("keep %s: %w", s.Name, err)
		}
		kept = s.Name + "." + suffix
	}
	// A plain copy left beside a compressed one (crash during compression).
	for _, s := range segs {
		if s.Compressed || s.Current {
			continue
		}
		gz := p.segName(s.First, true)
		if err := os.Rename(p.file(gz), p.file(gz+"."+suffix)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return "", fmt.Errorf("keep %s: %w", gz, err)
		}
	}
	if len(segs) > 0 {
		if err := syncDir(p.dir); err != nil {
			return "", fmt.Errorf("keep the broken log: %w", err)
		}
	}
	return kept, nil
}

// locate finds the line of an anchor without a position: in the plain
// segment that holds a.Seq, by a binary search on the seqs at line starts
// (lines are in seq order), in O(log size) reads. ok is false when it
// cannot (a gzipped segment, a line that does not parse on the way, no
// line with that seq): the caller reads the whole log then.
func locate(p logPath, segs []Segment, a Anchor) (Anchor, bool) {
	var s *Segment
	for i := range segs {
		if segs[i].First != 0 && segs[i].First <= a.Seq {
			s = &segs[i]
		}
	}
	if s == nil || s.Compressed {
		return a, false
	}
	f, err := os.Open(p.file(s.Name))
	if err != nil {
		return a, false
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return a, false
	}
	// lo: a line start with seq <= a.Seq; hi: past lo, every line starting
	// at or after hi has seq > a.Seq (or hi is the end).
	lo, hi := int64(0), st.Size()
	for hi-lo > 64<<10 {
		mid := lo + (hi-lo)/2
		start, seq, ok := lineAfter(f, mid-1, hi) // the first line starting at or after mid
		switch {
		case !ok:
			return a, false
		case start >= hi:
			hi = mid
		case seq <= a.Seq:
			lo = start
		default:
			hi = start
		}
	}
	for off := lo; off < hi; {
		head := make([]byte, 32)
		n, _ := f.ReadAt(head, off)
		seq := lineSeq(head[:n])
		if seq == a.Seq {
			a.Segment, a.Offset = s.First, off
			return a, true
		}
		if seq == 0 || seq > a.Seq {
			return a, false
		}
		next, _, ok := lineAfter(f, off, st.Size())
		if !ok || next <= off {
			return a, false
		}
		off = next
	}
	return a, false
}

// lineAfter finds the line that starts just past the first newline at or
// after offset from, and its seq; a start at or past limit (or the end, as
// limit, when no newline follows) is returned without its seq. ok is false
// when no newline comes within 4 MiB or the line does not start with a
// seq.
func lineAfter(f *os.File, from, limit int64) (start int64, seq uint64, ok bool) {
	buf := make([]byte, 64<<10)
	for off := from; off < from+4<<20; off += int64(len(buf)) {
		n, err := f.ReadAt(buf, off)
		if i := bytes.IndexByte(buf[:n], '\n'); i >= 0 {
			start = off + int64(i) + 1
			if start >= limit {
				return start, 0, true
			}
			head := make([]byte, 32)
			m, _ := f.ReadAt(head, start)
			seq = lineSeq(head[:m])
			return start, seq, seq != 0
		}
		if err != nil {
			return limit, 0, true // the end: no line starts after from
		}
	}
	return 0, 0, false
}
