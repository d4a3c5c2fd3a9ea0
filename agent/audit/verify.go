package audit

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path/filepath"
	"slices"
	"strings"
)

// Events the log writes itself.
const (
	// EventSegmentStart is the first line of every segment after the first.
	EventSegmentStart = "segment_start"
	// EventSegmentRemoved records that retention removed an old segment.
	EventSegmentRemoved = "segment_removed"
)

// maxVerifyLine bounds one line read by verify; a longer one is bad.
const maxVerifyLine = 64 << 20

// Result is the outcome of Verify.
type Result struct {
	OK       bool   `json:"ok"`
	Lines    int    `json:"lines"`               // lines checked, across segments
	LastSeq  uint64 `json:"last_seq"`            // seq of the last good line
	FirstBad int    `json:"first_bad,omitempty"` // 1-based line number of the first bad line, in File
	Reason   string `json:"reason,omitempty"`    // why it is bad
	// File is the segment holding the first bad line (empty for a
	// stream read by Verify).
	File string `json:"file,omitempty"`
	// Segments is how many segment files were read.
	Segments int `json:"segments,omitempty"`
	// FirstSeq is the seq of the first line read: above 1 when older
	// segments are gone by retention.
	FirstSeq uint64 `json:"first_seq,omitempty"`
	// Removed are the segments that retention removed, as the log records
	// them (segment_removed lines), oldest first. The records of segments
	// removed long ago may have gone with later removed segments; the
	// chain needs only the record of the segment just before FirstSeq.
	Removed []Removed `json:"removed,omitempty"`
}

// Removed is a segment gone by retention: the fields of its
// segment_removed line, and that line's seq.
type Removed struct {
	Segment   string `json:"segment"`
	FirstSeq  uint64 `json:"first_seq"`
	LastSeq   uint64 `json:"last_seq"`
	LastHash  string `json:"last_hash"`
	Reason    string `json:"reason"` // "keep" or "max_age"
	RecordSeq uint64 `json:"record_seq,omitempty"`
}

// gap is a range of seqs between two segments that no file holds.
type gap struct {
	from, to uint64
	hash     string // prev of the line after the gap
	file     string // the segment after the gap
	lines    int    // intact lines before it
}

type verifier struct {
	res      Result
	prev     string
	seq      uint64
	wantSeq  uint64 // the writer's checkpoint (0: none)
	wantHash string
	gaps     []gap
	removed  map[uint64]Removed // by LastSeq
	noGaps   bool               // a stream, or the tail after an anchor: nothing may be missing
	anyStart bool               // one segment alone: its first line may continue an earlier one
	anchored bool               // the first line read must be the checkpoint itself
	// tornOK names the current segment when a torn last line there, after
	// the anchored line, is the end of the log rather than a break: a crash
	// (kill -9 during a write) leaves exactly that, Open cuts it, and the
	// store's pending records bring back what it held (agent/enforce).
	tornOK    string
	prevFile  string
	present   map[uint64]bool // first seqs of the segments read
	last      Segment         // the last segment read whole
	lastLines int             // lines read of it
}

func newVerifier(wantSeq uint64, wantHash string) *verifier {
	return &verifier{res: Result{OK: true}, prev: Genesis, wantSeq: wantSeq, wantHash: wantHash, removed: map[uint64]Removed{}, present: map[uint64]bool{}}
}

var hashKey = []byte(`,"hash":"`)

// segment checks the lines of one segment read from r. It returns false
// when it found a bad line (res says where), and an error when r could not
// be read (a gzipped segment that does not decompress is a bad line, not
// an error: unreadable is as broken as edited).
func (v *verifier) segment(r io.Reader, name string, compressed bool) (bool, error) {
	v.res.Segments++
	first := true
	br := bufio.NewReaderSize(r, 256<<10)
	suffix := len(hashKey) + 64 + len(`"}`)
	var buf []byte
	for n := 1; ; n++ {
		bad := func(format string, args ...any) (bool, error) {
			v.res.OK, v.res.FirstBad, v.res.File, v.res.Reason = false, n, name, fmt.Sprintf(format, args...)
			return false, nil
		}
		line, err := br.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			buf = append(buf[:0], line...)
			for errors.Is(err, bufio.ErrBufferFull) && len(buf) <= maxVerifyLine {
				line, err = br.ReadSlice('\n')
				buf = append(buf, line...)
			}
			if len(buf) > maxVerifyLine {
				return bad("line longer than %d bytes", maxVerifyLine)
			}
			line = buf
		}
		if err != nil && !errors.Is(err, io.EOF) {
			if compressed {
				return bad("%s does not decompress: %v", name, err)
			}
			return false, fmt.Errorf("audit verify: read %s: %w", name, err)
		}
		if len(line) == 0 {
			v.prevFile = name
			return true, nil
		}
		if line[len(line)-1] != '\n' {
			if name == v.tornOK && v.res.Lines > 0 && errors.Is(err, io.EOF) {
				v.prevFile = name
				return true, nil
			}
			return bad("truncated line (no newline)")
		}
		line = line[:len(line)-1]
		if len(line) < suffix+2 || !bytes.HasPrefix(line[len(line)-suffix:], hashKey) {
			return bad("not an audit line (no trailing hash)")
		}
		hash := string(line[len(line)-suffix+len(hashKey) : len(line)-2])
		body := append(append([]byte(nil), line[:len(line)-suffix]...), '}')
		if hashOf(body) != hash {
			return bad("hash mismatch: the line was edited")
		}
		var h struct {
			Seq   uint64 `json:"seq"`
			Prev  string `json:"prev"`
			Event string `json:"event"`
		}
		if err := json.Unmarshal(body, &h); err != nil {
			return bad("not valid JSON: %v", err)
		}
		start := v.res.Lines == 0 && v.seq == 0 && v.prev == Genesis
		switch {
		case v.anchored && start:
			if h.Seq != v.wantSeq || hash != v.wantHash {
				return bad("the line there is not seq %d as parryd wrote it: the log was replaced or rewritten", v.wantSeq)
			}
		case h.Prev == v.prev && h.Seq == v.seq+1:
		case n > 1:
			if h.Prev != v.prev {
				return bad("prev hash does not match the line before: a line was removed, inserted or reordered")
			}
			return bad("seq %d follows %d", h.Seq, v.seq)
		case start && v.anyStart:
		case start && h.Seq > 1 && !v.noGaps:
			v.gaps = append(v.gaps, gap{from: 1, to: h.Seq - 1, hash: h.Prev, file: name})
		case start:
			return bad("the log starts at seq %d, not at seq 1 from the genesis hash", h.Seq)
		case h.Seq <= v.seq:
			return bad("seq %d follows seq %d of %s: segments overlap", h.Seq, v.seq, v.prevFile)
		case h.Seq == v.seq+1:
			return bad("prev hash does not match the last line of %s: a segment was replaced or edited", v.prevFile)
		case v.noGaps:
			return bad("seq %d..%d are missing after %s", v.seq+1, h.Seq-1, v.prevFile)
		default:
			v.gaps = append(v.gaps, gap{from: v.seq + 1, to: h.Seq - 1, hash: h.Prev, file: name, lines: v.res.Lines})
		}
		if h.Seq == v.wantSeq && hash != v.wantHash {
			return bad("seq %d is not the line parryd wrote: the log was replaced or rewritten", h.Seq)
		}
		if h.Event == EventSegmentRemoved {
			var rec struct {
				Fields Removed `json:"fields"`
			}
			if json.Unmarshal(body, &rec) == nil && rec.Fields.LastSeq > 0 {
				rec.Fields.RecordSeq = h.Seq
				v.removed[rec.Fields.LastSeq] = rec.Fields
			}
		}
		if v.res.FirstSeq == 0 {
			v.res.FirstSeq = h.Seq
		}
		if first {
			v.present[h.Seq], first = true, false
		}
		v.prev, v.seq = hash, h.Seq
		v.res.Lines, v.res.LastSeq = v.res.Lines+1, v.seq
	}
}

// explained reports whether retention records account for g: the segment
// just before it is recorded with g's last seq and hash, and, unless the
// gap is at the start of the log, records tile the whole gap.
func (v *verifier) explained(g gap) bool {
	r, ok := v.removed[g.to]
	if !ok || r.LastHash != g.hash {
		return false
	}
	if g.from == 1 {
		return true // older records may have gone with older segments
	}
	for r.FirstSeq > g.from {
		if r, ok = v.removed[r.FirstSeq-1]; !ok {
			return false
		}
	}
	return r.FirstSeq == g.from
}

// finish reports the first gap that retention does not explain, if it
// comes before what was found bad, and lists the removed segments.
func (v *verifier) finish() Result {
	for _, g := range v.gaps {
		if v.explained(g) {
			continue
		}
		v.res.OK, v.res.FirstBad, v.res.File, v.res.Lines = false, 1, g.file, g.lines
		if g.from == 1 {
			v.res.Reason = fmt.Sprintf("the log starts at seq %d, but no segment_removed record accounts for the segment before it (seq ..%d): segments were deleted or moved outside retention", g.to+1, g.to)
		} else {
			v.res.Reason = fmt.Sprintf("seq %d..%d are missing before %s and no segment_removed record accounts for them: a segment was deleted or moved outside retention", g.from, g.to, g.file)
		}
		break
	}
	for _, r := range v.removed {
		if !v.present[r.FirstSeq] { // recorded, but a crash kept the file: it was read
			v.res.Removed = append(v.res.Removed, r)
		}
	}
	slices.SortFunc(v.res.Removed, func(a, b Removed) int { return cmpUint(a.FirstSeq, b.FirstSeq) })
	return v.res
}

// Verify checks the whole chain read from r, one stream from the genesis
// hash (one segment file, or a log without segments).
func Verify(r io.Reader) (Result, error) {
	v := newVerifier(0, "")
	v.noGaps = true
	if _, err := v.segment(r, "", false); err != nil {
		return v.res, err
	}
	res := v.finish()
	res.Segments = 0
	return res, nil
}

// VerifyFile verifies the log whose current file is path, with all its
// segments. A missing log is an error (errors.Is(err, os.ErrNotExist)),
// never an intact log.
func VerifyFile(path string) (Result, error) {
	return VerifyFileAgainst(path, 0, "")
}

// VerifyFileAgainst verifies the log whose current file is path: every
// segment in order, the chain across them, segments gone by retention
// accounted for by their segment_removed records; and that it still holds
// the line seq with hash, as the writer's Last reported them: a log whose
// end was cut off, or that was rewritten with a consistent chain while the
// writer runs, fails. seq 0 checks the chain only. A missing log is not OK
// when seq is not 0.
func VerifyFileAgainst(path string, seq uint64, hash string) (Result, error) {
	segs, err := Segments(path)
	if err != nil {
		return Result{}, fmt.Errorf("audit verify: %w", err)
	}
	if len(segs) == 0 {
		if seq > 0 {
			return Result{FirstBad: 1, File: filepath.Base(path), Reason: fmt.Sprintf("the audit log is missing, but parryd has written %d lines to it: it was deleted or moved", seq)}, nil
		}
		return Result{}, fmt.Errorf("audit verify: %w", notExist(path))
	}
	return verifyList(path, segs, seq, hash)
}

// verifyList walks segs, the list of Segments(path). A rotation,
// compression or removal while it reads changes the list: a break found
// then is checked again on the new list (at most three times).
func verifyList(path string, segs []Segment, seq uint64, hash string) (Result, error) {
	for try := 0; ; try++ {
		v := newVerifier(seq, hash)
		res, err := v.walk(splitPath(path), segs)
		if err != nil || res.OK || try == 2 {
			return res, err
		}
		again, lerr := Segments(path)
		if lerr != nil || slices.Equal(again, segs) {
			return res, err
		}
		segs = again
	}
}

// VerifyLog verifies path: an old segment alone (VerifySegment) when its
// name is one, else the log whose current file it is (VerifyFile).
func VerifyLog(path string) (Result, error) {
	if IsSegment(path) {
		return VerifySegment(path)
	}
	return VerifyFile(path)
}

// walk verifies segs in order, after what v has read already; the last
// segment read must be the current one.
func (v *verifier) walk(p logPath, segs []Segment) (Result, error) {
	for _, s := range segs {
		r, err := openSegment(p, s)
		if errors.Is(err, fs.ErrNotExist) { // removed while we read
			continue
		}
		if err != nil && !s.Compressed {
			return v.res, fmt.Errorf("audit verify: %w", err)
		}
		before := v.res.Lines
		ok := false
		if err != nil {
			v.res.Segments++
			v.res.OK, v.res.FirstBad, v.res.File, v.res.Reason = false, 1, s.Name, fmt.Sprintf("%s does not decompress: %v", s.Name, err)
		} else {
			ok, err = v.segment(r, s.Name, s.Compressed)
			r.Close()
			if err != nil {
				return v.res, err
			}
		}
		if !ok {
			return v.finish(), nil
		}
		v.last, v.lastLines = s, v.res.Lines-before
	}
	if !v.last.Current {
		cur := filepath.Base(p.current())
		v.res.OK, v.res.FirstBad, v.res.File = false, 1, cur
		v.res.Reason = fmt.Sprintf("the current segment %s is missing after %s: it was deleted or moved", cur, v.last.Name)
		return v.finish(), nil
	}
	if v.res.OK && v.wantSeq > v.seq {
		v.res.OK, v.res.FirstBad, v.res.File = false, v.lastLines+1, v.last.Name
		v.res.Reason = fmt.Sprintf("the log ends at seq %d but parryd has written up to seq %d: lines were removed from its end", v.seq, v.wantSeq)
	}
	return v.finish(), nil
}

// VerifySegment checks one segment file alone (gzipped if its name ends in
// .gz): every line's hash and the chain inside it. Its first line may
// continue an earlier segment; that link is not checked (VerifyFile checks
// the whole log).
func VerifySegment(path string) (Result, error) {
	name := filepath.Base(path)
	s := Segment{Name: name, Compressed: strings.HasSuffix(name, ".gz")}
	r, err := openSegment(logPath{dir: filepath.Dir(path)}, s)
	if err != nil {
		if s.Compressed && !errors.Is(err, fs.ErrNotExist) {
			return Result{FirstBad: 1, File: name, Reason: fmt.Sprintf("%s does not decompress: %v", name, err)}, nil
		}
		return Result{}, fmt.Errorf("audit verify: %w", err)
	}
	defer r.Close()
	v := newVerifier(0, "")
	v.anyStart = true
	if _, err := v.segment(r, name, s.Compressed); err != nil {
		return v.res, err
	}
	return v.finish(), nil
}
