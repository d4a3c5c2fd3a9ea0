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
	// ErrFailed wraps every error of an append that wrote nothing: the
	// chain is unchanged and the caller must treat its event as not
	// recorded.
	ErrFailed = errors.New("audit: append failed")
)

// File is what Log needs of its file; *os.File implements it. Tests wrap it
// to inject write and sync failures (OpenWith).
type File interface {
	io.Writer
	io.ReaderAt
	Sync() error
	Truncate(size int64) error
	Stat() (os.FileInfo, error)
	Close() error
}

// Failure is an audit append or sync that failed and has not been followed
// by a successful append yet.
type Failure struct {
	Since time.Time `json:"since"` // first failure of this run
	Op    string    `json:"op"`    // "write" or "sync"
	Error string    `json:"error"` // the last error
	Count int       `json:"count"` // failed appends and syncs since Since
}

// Log appends to one audit file. It is safe for concurrent use.
//
// An append that returns nil has written its whole line(s) to the file with
// one write(2): they survive the daemon's death, and reach the disk at the
// next Sync. An append that fails wrote nothing: a partial write is cut off
// at once (ftruncate needs no free space), and if that fails too, before
// the next write. A failed Sync is reported by Failure and makes the next
// append retry the sync first, failing while the sync fails.
type Log struct {
	syncMu sync.Mutex // serializes Sync, so onSync sees seqs in order
	onSync func(seq uint64, hash string)
	mu     sync.Mutex
	f      File
	size   int64 // end of the last whole line
	torn   bool  // the file may hold a partial line past size
	seq    uint64
	prev   string
	now    func() time.Time
	dirty  bool
	buf    []byte
	fail   *Failure
}

// Open opens path for appending, continuing the chain from its last line.
func Open(path string, now func() time.Time) (*Log, error) {
	return OpenWith(path, now, nil)
}

// OpenWith is Open with the file wrapped by wrap (nil: none), for failure
// injection.
func OpenWith(path string, now func() time.Time, wrap func(File) File) (*Log, error) {
	of, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open audit log: %w", err)
	}
	var f File = of
	if wrap != nil {
		f = wrap(of)
	}
	l := &Log{f: f, prev: Genesis, now: now}
	last, size, err := lastLine(f)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("open audit log %s: %w", path, err)
	}
	l.size = size
	if last != nil {
		var h struct {
			Seq  uint64 `json:"seq"`
			Hash string `json:"hash"`
		}
		if err := json.Unmarshal(last, &h); err != nil || len(h.Hash) != 64 {
			// An edited last line: continue after it; verify reports it.
			h.Hash = hashOf(last)
		}
		l.seq, l.prev = h.Seq, h.Hash
	}
	return l, nil
}

// lastLine returns the last complete line of f (without its newline), or
// nil when the file has none, and the file's size after the repair: a torn
// tail (a partial last line without its newline, left by a short write or
// a crash mid-write) is cut off, so the chain continues from the last whole
// line.
func lastLine(f File) ([]byte, int64, error) {
	st, err := f.Stat()
	if err != nil {
		return nil, 0, err
	}
	size := st.Size()
	if size == 0 {
		return nil, 0, nil
	}
	var tail []byte
	const chunk = 64 << 10
	off := size
	for off > 0 && bytes.Count(tail, []byte("\n")) < 2 {
		n := int64(chunk)
		if off < n {
			n = off
		}
		off -= n
		b := make([]byte, n)
		if _, err := f.ReadAt(b, off); err != nil && !errors.Is(err, io.EOF) {
			return nil, 0, err
		}
		tail = append(b, tail...)
	}
	if tail[len(tail)-1] != '\n' {
		i := bytes.LastIndexByte(tail, '\n')
		for i < 0 && off > 0 { // one torn line longer than what was read
			n := int64(chunk)
			if off < n {
				n = off
			}
			off -= n
			b := make([]byte, n)
			if _, err := f.ReadAt(b, off); err != nil && !errors.Is(err, io.EOF) {
				return nil, 0, err
			}
			tail = append(b, tail...)
			i = bytes.LastIndexByte(tail, '\n')
		}
		keep := off + int64(i) + 1 // 0 when no whole line is left
		if err := f.Truncate(keep); err != nil {
			return nil, 0, fmt.Errorf("cut torn tail: %w", err)
		}
		size = keep
		tail = tail[:i+1]
		if len(tail) == 0 {
			return nil, 0, nil
		}
	}
	tail = tail[:len(tail)-1]
	if i := bytes.LastIndexByte(tail, '\n'); i >= 0 {
		tail = tail[i+1:]
	}
	return tail, size, nil
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

// Event is one event to append: its name and fields (encoded with
// encoding/json, or Raw).
type Event struct {
	Name   string
	Fields any
}

// Append writes one event. The line reaches the kernel (survives the
// daemon's death) before Append returns; Sync makes it durable on disk. An
// error wraps ErrFailed: nothing was written.
func (l *Log) Append(event string, fields any) error {
	_, err := l.AppendAll(Event{Name: event, Fields: fields})
	return err
}

// AppendAll writes events as consecutive lines with one write: either all
// of them are in the file when it returns nil, with the seq of the last
// one, or none (the error wraps ErrFailed).
func (l *Log) AppendAll(events ...Event) (uint64, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f == nil {
		return 0, ErrClosed
	}
	if op, err := l.repairLocked(); err != nil {
		return 0, l.failLocked(op, err)
	}
	seq, prev := l.seq, l.prev
	line := l.buf[:0]
	for _, ev := range events {
		h := header{Seq: seq + 1, Time: l.now().UTC().Format(time.RFC3339Nano), Event: ev.Name, Fields: ev.Fields, Prev: prev}
		var body []byte
		if raw, ok := ev.Fields.(Raw); ok && len(raw) > 0 {
			body = h.appendRaw(raw)
		} else {
			var err error
			if body, err = json.Marshal(h); err != nil {
				return 0, fmt.Errorf("%w: %s: encode: %w", ErrFailed, ev.Name, err)
			}
		}
		sum := sha256.Sum256(body)
		hash := hex.EncodeToString(sum[:])
		line = append(line, body[:len(body)-1]...)
		line = append(line, `,"hash":"`...)
		line = append(line, hash...)
		line = append(line, "\"}\n"...)
		seq, prev = h.Seq, hash
	}
	n, err := l.f.Write(line)
	if err == nil && n != len(line) {
		err = io.ErrShortWrite
	}
	if err != nil {
		if n > 0 {
			l.torn = true
			if terr := l.f.Truncate(l.size); terr == nil {
				l.torn = false
			}
		}
		return 0, l.failLocked("write", fmt.Errorf("%s: write: %w", events[0].Name, err))
	}
	if cap(line) <= 1<<20 {
		l.buf = line
	}
	l.size += int64(len(line))
	l.seq, l.prev, l.dirty = seq, prev, true
	l.fail = nil
	return seq, nil
}

// repairLocked cuts a torn tail left by a failed write and retries a failed
// sync before the next write; it returns the failed operation with the
// error. Caller holds l.mu.
func (l *Log) repairLocked() (string, error) {
	if l.torn {
		if err := l.f.Truncate(l.size); err != nil {
			return "write", fmt.Errorf("cut torn tail: %w", err)
		}
		l.torn = false
	}
	if l.fail != nil && l.fail.Op == "sync" {
		if err := l.f.Sync(); err != nil {
			return "sync", fmt.Errorf("sync: %w", err)
		}
		l.fail.Op = "write" // synced; what remains is this write
	}
	return "", nil
}

// failLocked records a failure and returns err wrapped in ErrFailed.
// Caller holds l.mu.
func (l *Log) failLocked(op string, err error) error {
	if l.fail == nil {
		l.fail = &Failure{Since: l.now().UTC()}
	}
	l.fail.Op = op
	l.fail.Error = err.Error()
	l.fail.Count++
	return fmt.Errorf("%w: %w", ErrFailed, err)
}

// Failure reports the audit failure that lasts, or nil when the last append
// (and sync) succeeded.
func (l *Log) Failure() *Failure {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.fail == nil {
		return nil
	}
	f := *l.fail
	return &f
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
	if err != nil {
		err = l.failLocked("sync", fmt.Errorf("sync: %w", err))
	}
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
	serr := l.Sync()
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f == nil {
		return serr
	}
	err := l.f.Close()
	l.f = nil
	return errors.Join(serr, err)
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
