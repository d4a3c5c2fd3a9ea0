// Package audit is parry's tamper-evident audit log: one JSON object per
// line in audit.log, each carrying a sequence number, the SHA-256 hash of the
// previous line and its own hash. Editing, removing or reordering any line
// breaks the chain, and Verify reports the first line where it breaks.
//
// Line format (fields in this order; "hash" is always last):
//
//	{"seq":7,"time":"2026-11-27T00:12:03.123Z","event":"block","fields":{...},"prev":"<64 hex>","hash":"<64 hex>"}
//
// hash = SHA-256 of the line's bytes up to the "hash" field, with the
// closing brace: that is, of `{"seq":7,...,"prev":"<hex>"}`.
package audit

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"sync"
	"time"
)

// Genesis is the prev hash of the first line.
const Genesis = "0000000000000000000000000000000000000000000000000000000000000000"

// Sentinel errors.
var (
	ErrClosed = errors.New("audit: log closed")
)

// Log appends to one audit file. It is safe for concurrent use.
type Log struct {
	syncMu sync.Mutex // serializes Sync, so onSync sees seqs in order
	onSync func(seq uint64, hash string)
	mu     sync.Mutex
	f      *os.File
	seq    uint64
	prev   string
	now    func() time.Time
	dirty  bool
	buf    []byte
}

// Open opens path for appending, continuing the chain from its last line.
func Open(path string, now func() time.Time) (*Log, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open audit log: %w", err)
	}
	l := &Log{f: f, prev: Genesis, now: now}
	last, err := lastLine(f)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("open audit log %s: %w", path, err)
	}
	if last != nil {
		var h struct {
			Seq  uint64 `json:"seq"`
			Hash string `json:"hash"`
		}
		if err := json.Unmarshal(last, &h); err != nil || len(h.Hash) != 64 {
			// A torn or edited last line: continue after it; verify reports it.
			h.Hash = hashOf(last)
		}
		l.seq, l.prev = h.Seq, h.Hash
	}
	return l, nil
}

// lastLine returns the last complete line of f (without its newline), or
// nil when the file is empty. A torn tail without a newline is terminated so
// the next line starts cleanly.
func lastLine(f *os.File) ([]byte, error) {
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	size := st.Size()
	if size == 0 {
		return nil, nil
	}
	var tail []byte
	const chunk = 64 << 10
	for off := size; off > 0 && bytes.Count(tail, []byte("\n")) < 2; {
		n := int64(chunk)
		if off < n {
			n = off
		}
		off -= n
		b := make([]byte, n)
		if _, err := f.ReadAt(b, off); err != nil && !errors.Is(err, io.EOF) {
			return nil, err
		}
		tail = append(b, tail...)
		if off == 0 {
			break
		}
	}
	if tail[len(tail)-1] != '\n' {
		if _, err := f.Write([]byte("\n")); err != nil {
			return nil, err
		}
		tail = append(tail, '\n')
	}
	tail = tail[:len(tail)-1]
	if i := bytes.LastIndexByte(tail, '\n'); i >= 0 {
		tail = tail[i+1:]
	}
	return tail, nil
}

type header struct {
	Seq    uint64 `json:"seq"`
	Time   string `json:"time"`
	Event  string `json:"event"`
	Fields any    `json:"fields,omitempty"`
	Prev   string `json:"prev"`
}

// Raw is an event's fields already encoded: one compact JSON object,
// exactly as encoding/json would write it (HTML characters escaped). Append
// copies it into the line as is, without the validating copy encoding/json
// makes of a Marshaler's output; it is for fields encoded at high rates.
type Raw []byte

// appendRaw renders h with fields raw, as json.Marshal(h) would.
func (h *header) appendRaw(raw Raw) []byte {
	b := make([]byte, 0, len(raw)+len(h.Time)+len(h.Prev)+96)
	b = append(b, `{"seq":`...)
	b = strconv.AppendUint(b, h.Seq, 10)
	b = append(b, `,"time":"`...)
	b = append(b, h.Time...)
	b = append(b, `","event":`...)
	ev, _ := json.Marshal(h.Event) // a string always encodes
	b = append(b, ev...)
	b = append(b, `,"fields":`...)
	b = append(b, raw...)
	b = append(b, `,"prev":"`...)
	b = append(b, h.Prev...)
	return append(b, "\"}"...)
}

// Append writes one event. The line reaches the kernel (survives the
// daemon's death) before Append returns; Sync makes it durable on disk.
func (l *Log) Append(event string, fields any) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f == nil {
		return ErrClosed
	}
	h := header{Seq: l.seq + 1, Time: l.now().UTC().Format(time.RFC3339Nano), Event: event, Fields: fields, Prev: l.prev}
	var body []byte
	if raw, ok := fields.(Raw); ok && len(raw) > 0 {
		body = h.appendRaw(raw)
	} else {
		var err error
		if body, err = json.Marshal(h); err != nil {
			return fmt.Errorf("audit %s: encode: %w", event, err)
		}
	}
	sum := sha256.Sum256(body)
	hash := hex.EncodeToString(sum[:])
	line := append(l.buf[:0], body[:len(body)-1]...)
	line = append(line, `,"hash":"`...)
	line = append(line, hash...)
	line = append(line, "\"}\n"...)
	if _, err := l.f.Write(line); err != nil {
		return fmt.Errorf("audit %s: write: %w", event, err)
	}
	if cap(line) <= 1<<20 {
		l.buf = line
	}
	l.seq, l.prev, l.dirty = h.Seq, hash, true
	return nil
}

// OnSync sets fn, called after each fsync that made new lines durable, with
// the seq and hash of the last durable line (calls are serialized and in
// order). Set it before the log is used.
func (l *Log) OnSync(fn func(seq uint64, hash string)) {
	l.syncMu.Lock()
	defer l.syncMu.Unlock()
	l.onSync = fn
}

// Sync flushes written lines to disk (fsync) if any are pending.
func (l *Log) Sync() error {
	l.syncMu.Lock()
	defer l.syncMu.Unlock()
	l.mu.Lock()
	if l.f == nil || !l.dirty {
		l.mu.Unlock()
		return nil
	}
	l.dirty = false
	seq, hash := l.seq, l.prev
	err := l.f.Sync()
	l.mu.Unlock()
	if err != nil {
		return fmt.Errorf("audit sync: %w", err)
	}
	if l.onSync != nil {
		l.onSync(seq, hash)
	}
	return nil
}

// Seq returns the sequence number of the last line.
func (l *Log) Seq() uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.seq
}

// Last returns the sequence number and hash of the last line written (0 and
// Genesis for an empty log): a checkpoint that VerifyFileAgainst compares the
// file with.
func (l *Log) Last() (uint64, string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.seq, l.prev
}

// Close syncs and closes the file.
func (l *Log) Close() error {
	if err := l.Sync(); err != nil {
		return err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f == nil {
		return nil
	}
	err := l.f.Close()
	l.f = nil
	return err
}

func hashOf(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// Result is the outcome of Verify.
type Result struct {
	OK       bool   `json:"ok"`
	Lines    int    `json:"lines"`               // lines checked
	LastSeq  uint64 `json:"last_seq"`            // seq of the last good line
	FirstBad int    `json:"first_bad,omitempty"` // 1-based line number of the first bad line
	Reason   string `json:"reason,omitempty"`    // why it is bad
}

// Verify checks the whole chain read from r.
func Verify(r io.Reader) (Result, error) {
	return verify(r, 0, "")
}

// verify checks the chain; when seq is not 0, the line with that sequence
// number must also carry hash (the writer's checkpoint).
func verify(r io.Reader, wantSeq uint64, wantHash string) (Result, error) {
	br := bufio.NewReaderSize(r, 256<<10)
	res := Result{OK: true}
	prev := Genesis
	var seq uint64
	suffix := len(`,"hash":"`) + 64 + len(`"}`)
	for n := 1; ; n++ {
		line, err := br.ReadBytes('\n')
		if len(line) == 0 && errors.Is(err, io.EOF) {
			if wantSeq > seq {
				res.OK, res.FirstBad = false, n
				res.Reason = fmt.Sprintf("the log ends at seq %d but parryd has written up to seq %d: lines were removed from its end", seq, wantSeq)
			}
			return res, nil
		}
		if err != nil && !errors.Is(err, io.EOF) {
			return res, fmt.Errorf("audit verify: read: %w", err)
		}
		bad := func(format string, args ...any) (Result, error) {
			res.OK, res.FirstBad, res.Reason = false, n, fmt.Sprintf(format, args...)
			return res, nil
		}
		if line[len(line)-1] != '\n' {
			return bad("truncated line (no newline)")
		}
		line = line[:len(line)-1]
		if len(line) < suffix+2 || !bytes.HasPrefix(line[len(line)-suffix:], []byte(`,"hash":"`)) {
			return bad("not an audit line (no trailing hash)")
		}
		hash := string(line[len(line)-suffix+len(`,"hash":"`) : len(line)-2])
		body := append(append([]byte(nil), line[:len(line)-suffix]...), '}')
		if hashOf(body) != hash {
			return bad("hash mismatch: the line was edited")
		}
		var h struct {
			Seq  uint64 `json:"seq"`
			Prev string `json:"prev"`
		}
		if err := json.Unmarshal(body, &h); err != nil {
			return bad("not valid JSON: %v", err)
		}
		if h.Prev != prev {
			return bad("prev hash does not match the line before: a line was removed, inserted or reordered")
		}
		if h.Seq != seq+1 {
			return bad("seq %d follows %d", h.Seq, seq)
		}
		if h.Seq == wantSeq && hash != wantHash {
			return bad("seq %d is not the line parryd wrote: the log was replaced or rewritten", h.Seq)
		}
		prev, seq = hash, h.Seq
		res.Lines, res.LastSeq = n, seq
	}
}

// VerifyFile verifies the log at path. A missing file is an error
// (errors.Is(err, os.ErrNotExist)), never an intact log.
func VerifyFile(path string) (Result, error) {
	return VerifyFileAgainst(path, 0, "")
}

// VerifyFileAgainst verifies the log at path and that it still holds the
// line seq with hash, as the writer's Last reported them: a log whose end
// was cut off, or that was rewritten with a consistent chain while the
// writer runs, fails. seq 0 checks the chain only. A missing file is not OK
// when seq is not 0.
func VerifyFileAgainst(path string, seq uint64, hash string) (Result, error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) && seq > 0 {
		return Result{FirstBad: 1, Reason: fmt.Sprintf("the audit log is missing, but parryd has written %d lines to it: it was deleted or moved", seq)}, nil
	}
	if err != nil {
		return Result{}, fmt.Errorf("audit verify: %w", err)
	}
	defer f.Close()
	return verify(f, seq, hash)
}
