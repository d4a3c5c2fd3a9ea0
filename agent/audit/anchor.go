package audit

import (
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
// line, deleted, or rewritten fails. An anchor without a position, or
// whose segment is gone, falls back to VerifyFileAgainst (the whole log).
//
// Line numbers in the result (FirstBad, Lines) count from the anchored
// line.
func CheckAnchor(path string, a Anchor) (Result, error) {
	if a.Seq == 0 {
		return Result{OK: true}, nil
	}
	if a.Segment == 0 {
		return VerifyFileAgainst(path, a.Seq, a.Hash)
	}
	segs, err := Segments(path)
	if err != nil {
		return Result{}, fmt.Errorf("audit anchor: %w", err)
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
