// Package audit is parry's tamper-evident audit log: one JSON object per
// line in audit.log, each carrying a sequence number, the SHA-256 hash of the
// previous line and its own hash. Editing, removing or reordering any line
// breaks the chain, and Verify reports the first line where it breaks.
//
// The log rotates by size into segments whose chain continues across files
// (segment.go); old segments are gzipped and removed by retention, each
// removal recorded in the log (rotate.go). VerifyFile walks all segments;
// CheckAnchor checks the tail after a durable line in time independent of
// the log's length (anchor.go).
//
// Line format (fields in this order; "hash" is always last):
//
//	{"seq":7,"time":"2026-11-27T00:12:03.123Z","event":"block","fields":{...},"prev":"<64 hex>","hash":"<64 hex>"}
//
// hash = SHA-256 of the line's bytes up to the "hash" field, with the
// closing brace: that is, of `{"seq":7,...,"prev":"<hex>"}`.
package audit

import (
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
	"sync/atomic"
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

// Log appends to the current segment of an audit log. It is safe for
// concurrent use.
//
// An append that returns nil has written its whole line(s) to the file with
// one write(2): they survive the daemon's death, and reach the disk at the
// next Sync. An append that fails wrote nothing: a partial write is cut off
// at once (ftruncate needs no free space), and if that fails too, before
// the next write. A failed Sync is reported by Failure and makes the next
// append retry the sync first, failing while the sync fails.
//
// When the current segment has reached Config.MaxSize, the next append
// first rotates (rotate.go); a rotation that fails leaves the current
// segment in use and is retried a minute later.
type Log struct {
	syncMu sync.Mutex // serializes Sync, so onSync sees seqs in order
	onSync func(Anchor)
	mu     sync.Mutex
	p      logPath
	cfg    Config
	wrap   func(File) File
	f      File
	size   int64 // end of the last whole line
	torn   bool  // the file may hold a partial line past size
	seq    uint64
	prev   string
	first  uint64 // seq of the current segment's first line
	lastAt int64  // offset of the last line in the current segment
	now    func() time.Time
	dirty  bool
	buf    []byte
	fail   *Failure

	rot     rotation    // rotation state (rotate.go), under mu
	maint   maintenance // compression and retention (rotate.go)
	crashAt func(step string) error
	tap     Tap         // under mu
	failing atomic.Bool // fail != nil, readable without mu (metrics)
}

// Tap hears of every line appended (parry events, agent/events): the log
// calls Appended after each append that moved its seq, outside its lock.
// The lines are a copy, made under the lock only while Tapping is true.
type Tap interface {
	// Tapping reports whether anyone listens now; it must not block.
	Tapping() bool
	// Appended says that an append moved the log's seq from before to
	// last. lines (nil when no one was tapping) are the append's lines,
	// the last len(names) seqs up to last, one per name, each ending in a
	// newline. Concurrent appends may call it out of seq order: before
	// chains them. A rotation's segment_start line is not among them.
	Appended(before, last uint64, names []string, lines []byte)
}

// SetTap installs t (nil: none) and returns the seq of the last line
// appended: the first Appended call's before.
func (l *Log) SetTap(t Tap) uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.tap = t
	return l.seq
}

// Open opens path for appending with the default Config, continuing the
// chain from its last line.
func Open(path string, now func() time.Time) (*Log, error) {
	return OpenConfig(path, Config{}, now, nil)
}

// OpenWith is Open with the file wrapped by wrap (nil: none), for failure
// injection.
func OpenWith(path string, now func() time.Time, wrap func(File) File) (*Log, error) {
	return OpenConfig(path, Config{}, now, wrap)
}

// OpenConfig opens the log whose current file is path (audit.log) for
// appending, with rotation and retention as cfg says (zero values:
// defaults), and starts its background maintenance. It finishes a rotation
// a crash interrupted, cuts a torn last line, and continues the chain from
// the last whole line — of the current file, or of the newest old segment
// when the current file is empty (then its first line is a
// segment_start). It reads only the ends of files: its cost does not grow
// with the log.
func OpenConfig(path string, cfg Config, now func() time.Time, wrap func(File) File) (*Log, error) {
	l := &Log{p: splitPath(path), cfg: cfg.WithDefaults(), wrap: wrap, prev: Genesis, now: now}
	if err := l.finishRotation(); err != nil {
		return nil, fmt.Errorf("open audit log %s: %w", path, err)
	}
	f, err := l.openFile(path, false)
	if err != nil {
		return nil, fmt.Errorf("open audit log: %w", err)
	}
	l.f = f
	last, lastAt, size, err := lastLine(f)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("open audit log %s: %w", path, err)
	}
	l.size, l.lastAt = size, lastAt
	if last != nil {
		l.seq, l.prev = lineEnd(last)
		head := make([]byte, 96)
		n, _ := f.ReadAt(head, 0)
		l.first = lineSeq(head[:n])
	} else if err := l.continueSegment(); err != nil {
		f.Close()
		return nil, fmt.Errorf("open audit log %s: %w", path, err)
	}
	l.maint.start(l)
	return l, nil
}

// openFile opens (or creates) a segment file for appending, wrapped.
func (l *Log) openFile(path string, trunc bool) (File, error) {
	flag := os.O_RDWR | os.O_CREATE | os.O_APPEND
	if trunc {
		flag |= os.O_TRUNC
	}
	of, err := os.OpenFile(path, flag, 0o600)
	if err != nil {
		return nil, err
	}
	var f File = of
	if l.wrap != nil {
		f = l.wrap(of)
	}
	return f, nil
}

// lineEnd is the seq and hash of a whole line; an edited line continues
// the chain after its bytes (verify reports it).
func lineEnd(line []byte) (uint64, string) {
	var h struct {
		Seq  uint64 `json:"seq"`
		Hash string `json:"hash"`
	}
	if err := json.Unmarshal(line, &h); err != nil || len(h.Hash) != 64 {
		h.Hash = hashOf(line)
	}
	return h.Seq, h.Hash
}

// lastLine returns the last complete line of f (without its newline) and
// its offset, or nil when the file has none, and the file's size after
// the repair: a torn tail (a partial last line without its newline, left
// by a short write or a crash mid-write) is cut off, so the chain
// continues from the last whole line.
func lastLine(f File) ([]byte, int64, int64, error) {
	st, err := f.Stat()
	if err != nil {
		return nil, 0, 0, err
	}
	last, at, keep, err := findLast(f, st.Size())
	if err != nil {
		return nil, 0, 0, err
	}
	if keep != st.Size() {
		if err := f.Truncate(keep); err != nil {
			return nil, 0, 0, fmt.Errorf("cut torn tail: %w", err)
		}
	}
	return last, at, keep, nil
}

// findLast finds the last complete line in the first size bytes of r,
// reading backwards from the end: the line (without its newline) or nil,
// its offset, and the end of the last whole line (size, unless the tail is
// torn).
func findLast(r io.ReaderAt, size int64) (line []byte, at, keep int64, err error) {
	var tail []byte // the bytes [off, size)
	const chunk = 64 << 10
	off := size
	read := func() error {
		n := min(int64(chunk), off)
		off -= n
		b := make([]byte, n, n+int64(len(tail)))
		if _, err := r.ReadAt(b, off); err != nil && !errors.Is(err, io.EOF) {
			return err
		}
		tail = append(b, tail...)
		return nil
	}
	for { // keep: just after the last newline
		if i := bytes.LastIndexByte(tail, '\n'); i >= 0 {
			keep = off + int64(i) + 1
			break
		}
		if off == 0 {
			return nil, 0, 0, nil // no whole line
		}
		if err := read(); err != nil {
			return nil, 0, 0, err
		}
	}
	for { // at: just after the newline before it, or 0
		if i := bytes.LastIndexByte(tail[:keep-1-off], '\n'); i >= 0 {
			at = off + int64(i) + 1
			break
		}
		if off == 0 {
			at = 0
			break
		}
		if err := read(); err != nil {
			return nil, 0, 0, err
		}
	}
	return tail[at-off : keep-1-off], at, keep, nil
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
	before, tap := l.seq, l.tap
	seq, tapped, err := l.appendLocked(events)
	after := l.seq
	l.mu.Unlock()
	if tap != nil && after != before {
		var names []string
		if tapped != nil {
			names = make([]string, len(events))
			for i, ev := range events {
				names[i] = ev.Name
			}
		}
		tap.Appended(before, after, names, tapped)
	}
	return seq, err
}

// appendLocked is AppendAll under l.mu; tapped is a copy of the lines
// written if the tap is tapping once they are written (not before: a
// subscriber that missed the copy can find the line in the file). Caller
// holds l.mu.
func (l *Log) appendLocked(events []Event) (seq uint64, tapped []byte, err error) {
	if l.f == nil {
		return 0, nil, ErrClosed
	}
	if op, err := l.repairLocked(); err != nil {
		return 0, nil, l.failLocked(op, err)
	}
	if err := l.maybeRotateLocked(); err != nil {
		return 0, nil, err
	}
	line, seq, prev, lastAt, err := l.render(l.buf[:0], l.seq, l.prev, events)
	if err != nil {
		return 0, nil, err
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
		return 0, nil, l.failLocked("write", fmt.Errorf("%s: write: %w", events[0].Name, err))
	}
	if cap(line) <= 1<<20 {
		l.buf = line
	}
	l.lastAt = l.size + lastAt
	l.size += int64(len(line))
	l.seq, l.prev, l.dirty = seq, prev, true
	l.fail = nil
	l.failing.Store(false)
	if l.tap != nil && l.tap.Tapping() {
		tapped = append([]byte(nil), line...)
	}
	return seq, tapped, nil
}

// render appends events to line as consecutive audit lines chained from
// seq and prev; it returns the lines, the seq and hash of the last one and
// its offset in line. An error wraps ErrFailed.
func (l *Log) render(line []byte, seq uint64, prev string, events []Event) ([]byte, uint64, string, int64, error) {
	var lastAt int64
	for _, ev := range events {
		h := header{Seq: seq + 1, Time: l.now().UTC().Format(time.RFC3339Nano), Event: ev.Name, Fields: ev.Fields, Prev: prev}
		var body []byte
		if raw, ok := ev.Fields.(Raw); ok && len(raw) > 0 {
			body = h.appendRaw(raw)
		} else {
			var err error
			if body, err = json.Marshal(h); err != nil {
				return nil, 0, "", 0, fmt.Errorf("%w: %s: encode: %w", ErrFailed, ev.Name, err)
			}
		}
		sum := sha256.Sum256(body)
		hash := hex.EncodeToString(sum[:])
		lastAt = int64(len(line))
		line = append(line, body[:len(body)-1]...)
		line = append(line, `,"hash":"`...)
		line = append(line, hash...)
		line = append(line, "\"}\n"...)
		seq, prev = h.Seq, hash
	}
	return line, seq, prev, lastAt, nil
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
	l.failing.Store(true)
	return fmt.Errorf("%w: %w", ErrFailed, err)
}

// Failing reports whether an audit failure lasts (Failure is not nil),
// without waiting for the log's lock: for the metrics.
func (l *Log) Failing() bool { return l.failing.Load() }

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
// the anchor of the last durable line: its seq, hash, segment and offset
// (calls are serialized and in order). Set it before the log is used.
func (l *Log) OnSync(fn func(Anchor)) {
	l.syncMu.Lock()
	defer l.syncMu.Unlock()
	l.onSync = fn
}

// Sync flushes written lines to disk (fsync) if any are pending. It also
// starts the maintenance (compression, retention) when it is due: after a
// rotation, and once an hour for retention by age.
func (l *Log) Sync() error {
	l.syncMu.Lock()
	defer l.syncMu.Unlock()
	l.mu.Lock()
	if l.f == nil || !l.dirty {
		l.mu.Unlock()
		l.maint.kickIfDue(l)
		return nil
	}
	l.dirty = false
	a := Anchor{Seq: l.seq, Hash: l.prev, Segment: l.first, Offset: l.lastAt}
	err := l.f.Sync()
	if err != nil {
		err = l.failLocked("sync", fmt.Errorf("sync: %w", err))
	}
	l.mu.Unlock()
	if err != nil {
		return fmt.Errorf("audit sync: %w", err)
	}
	l.maint.synced(a)
	if l.onSync != nil {
		l.onSync(a)
	}
	l.maint.kickIfDue(l)
	return nil
}

// SyncLines makes the lines written so far durable (fsync) without
// calling the OnSync function: the next Sync still does (and syncs again,
// which then costs little). The decision path calls it for the lines of
// each group it commits, so that an acknowledged decision's audit line is
// on disk before the acknowledgement.
func (l *Log) SyncLines() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f == nil {
		return ErrClosed
	}
	if err := l.f.Sync(); err != nil {
		return fmt.Errorf("audit sync: %w", l.failLocked("sync", fmt.Errorf("sync: %w", err)))
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

// Close stops the maintenance (an interrupted compression is redone at the
// next one), syncs and closes the file.
func (l *Log) Close() error {
	l.maint.stop()
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
