package logsource

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// The journal is read by running journalctl, not by linking libsystemd or
// parsing journal files:
//
//   - libsystemd's sd-journal (through cgo, as coreos/go-systemd/sdjournal
//     does) would end the static, cgo-free parryd binary and tie it to the
//     host's libsystemd at run time.
//   - A pure-Go reader of the journal file format must follow systemd's
//     changes to it: compact mode (systemd 252, Debian 12's default for new
//     files), zstd/xz/lz4 compressed fields, keyed-hash tables, files
//     rotated and vacuumed under it, and several journal directories. A bug
//     there is a blind spot an attacker can aim at.
//   - journalctl is systemd's own reader, present wherever journald is, and
//     is what mature shippers run (Vector's journald source, fail2ban with
//     a cursor): `journalctl --follow --output=json --after-cursor=C` with
//     a fixed argument vector. The cost is one process and JSON decoding,
//     far below what a detector needs per line.
//
// The argument vector is fixed and built here: no shell, no text from a
// log line in it. Unit and identifier names come from the config and must
// be made of the characters systemd allows (ValidUnit, ValidIdentifier);
// the cursor must look like a journald cursor (ValidCursor).

// Defaults of JournalOptions.
const (
	DefaultJournalctl     = "journalctl"
	DefaultJournalMaxLine = 64 << 10 // one JSON entry; fields over 4096 bytes are null without --all
	DefaultMinBackoff     = time.Second
	DefaultMaxBackoff     = time.Minute
	maxStderr             = 2048
	cursorTries           = 3
)

// ErrInvalidJournal is wrapped by NewJournal's errors.
var ErrInvalidJournal = errors.New("invalid journal source")

// JournalOptions configure a journal source. At least one unit or
// identifier is required: the source never reads the whole journal.
type JournalOptions struct {
	Units       []string      // _SYSTEMD_UNIT values (exact names), matched by journald
	Identifiers []string      // SYSLOG_IDENTIFIER values
	Cursor      string        // resume after this entry; empty: first start
	Since       time.Duration // first start: entries this far back (0: new entries only)
	Command     string        // journalctl, looked up in PATH at each start; default DefaultJournalctl
	MaxLine     int           // longest JSON line; longer ones are skipped and counted
	MaxMessage  int           // longest MESSAGE kept; longer ones are cut; default MaxLine
	MinBackoff  time.Duration // first wait before restarting journalctl
	MaxBackoff  time.Duration
	Now         func() time.Time
	Logger      *slog.Logger
}

// Entry is one journal entry.
type Entry struct {
	Message    string
	Cut        bool   // MESSAGE was longer than MaxMessage (or than journalctl shows: null), or had several values
	Unit       string // _SYSTEMD_UNIT, set by journald
	Identifier string // SYSLOG_IDENTIFIER, set by the sender
	PID        int
	// Root is set when the entry's _UID (a trusted field: journald sets it
	// from the sender's credentials) is 0.
	Root   bool
	Time   time.Time // __REALTIME_TIMESTAMP
	Cursor string    // save it once the entry is handled
}

// JournalStats are a journal source's counters.
type JournalStats struct {
	Entries      uint64    `json:"entries"`
	Cut          uint64    `json:"cut"`
	Dropped      uint64    `json:"dropped"`       // JSON lines too long or not parseable
	Restarts     uint64    `json:"restarts"`      // journalctl started again after it exited
	CursorResets uint64    `json:"cursor_resets"` // saved cursors given up (see Run)
	Running      bool      `json:"running"`
	LastEntry    time.Time `json:"last_entry,omitzero"` // journal time of the last entry
	LastRead     time.Time `json:"last_read,omitzero"`  // when it was read (LastRead-LastEntry: lag)
	Cursor       string    `json:"cursor,omitempty"`
	Err          string    `json:"error,omitempty"` // why journalctl last exited, with its stderr
}

// Journal follows the journal through journalctl.
type Journal struct {
	o     JournalOptions
	mu    sync.Mutex
	stats JournalStats
}

// NewJournal checks the options (a strict charset for units, identifiers
// and the cursor) and fills in defaults.
func NewJournal(o JournalOptions) (*Journal, error) {
	bad := func(format string, args ...any) (*Journal, error) {
		return nil, fmt.Errorf("journal source: %w: %s", ErrInvalidJournal, fmt.Sprintf(format, args...))
	}
	if len(o.Units) == 0 && len(o.Identifiers) == 0 {
		return bad("no unit and no identifier: the whole journal is never read")
	}
	for _, u := range o.Units {
		if !ValidUnit(u) {
			return bad("unit %q: 1..256 of A-Z a-z 0-9 : _ . @ - \\, not starting with -", u)
		}
	}
	for _, id := range o.Identifiers {
		if !ValidIdentifier(id) {
			return bad("identifier %q: 1..64 of A-Z a-z 0-9 _ . @ / -, not starting with -", id)
		}
	}
	if o.Cursor != "" && !ValidCursor(o.Cursor) {
		return bad("cursor %q does not look like a journald cursor", o.Cursor)
	}
	if o.Since < 0 {
		return bad("since %v is negative", o.Since)
	}
	if o.Command == "" {
		o.Command = DefaultJournalctl
	}
	if o.MaxLine <= 0 {
		o.MaxLine = DefaultJournalMaxLine
	}
	if o.MaxMessage <= 0 {
		o.MaxMessage = MaxLine
	}
	if o.MinBackoff <= 0 {
		o.MinBackoff = DefaultMinBackoff
	}
	if o.MaxBackoff < o.MinBackoff {
		o.MaxBackoff = max(DefaultMaxBackoff, o.MinBackoff)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	j := &Journal{o: o}
	j.stats.Cursor = o.Cursor
	return j, nil
}

// ValidUnit reports whether s is a unit name of the characters systemd
// allows (A-Z a-z 0-9 : _ . @ - and the \ of escapes), 1..256 long, not
// starting with "-". Such a name is safe in journalctl's argument vector.
func ValidUnit(s string) bool {
	return validName(s, 256, ":_.@-\\")
}

// ValidIdentifier reports whether s is a SYSLOG_IDENTIFIER of A-Z a-z 0-9
// _ . @ / - (postfix logs as "postfix/smtpd"), 1..64 long, not starting
// with "-".
func ValidIdentifier(s string) bool {
	return validName(s, 64, "_.@/-")
}

// ValidCursor reports whether s looks like a journald cursor
// ("s=...;i=...;b=...;m=...;t=...;x=..."): 1..512 of A-Z a-z 0-9 = ;.
func ValidCursor(s string) bool {
	return strings.Contains(s, "=") && validName(s, 512, "=;")
}

func validName(s string, max int, extra string) bool {
	if s == "" || len(s) > max || s[0] == '-' {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte(extra, c) >= 0) {
			return false
		}
	}
	return true
}

// Args returns journalctl's argument vector for a start after cursor (or a
// first start when cursor is empty).
func (j *Journal) Args(cursor string) []string {
	args := []string{"--follow", "--output=json", "--no-pager", "--quiet"}
	// --follow alone shows the last 10 entries: --no-tail undoes that.
	switch {
	case cursor != "":
		args = append(args, "--no-tail", "--after-cursor="+cursor)
	case j.o.Since > 0:
		args = append(args, "--no-tail", "--since=@"+strconv.FormatInt(j.o.Now().Add(-j.o.Since).Unix(), 10))
	default:
		args = append(args, "--lines=0")
	}
	// Matches: each a group of its own, joined by "+" (OR).
	first := true
	add := func(m string) {
		if !first {
			args = append(args, "+")
		}
		args = append(args, m)
		first = false
	}
	for _, u := range j.o.Units {
		add("_SYSTEMD_UNIT=" + u)
	}
	for _, id := range j.o.Identifiers {
		add("SYSLOG_IDENTIFIER=" + id)
	}
	return args
}

// Stats returns a snapshot of the counters.
func (j *Journal) Stats() JournalStats {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.stats
}

func (j *Journal) update(f func(*JournalStats)) {
	j.mu.Lock()
	f(&j.stats)
	j.mu.Unlock()
}

// Run runs journalctl until ctx is done, calling emit for each entry in
// order from this goroutine, and starts it again after the last cursor
// when it exits, waiting MinBackoff, doubling up to MaxBackoff while it
// keeps failing. It returns nil when ctx is done.
//
// A cursor journalctl cannot seek to (the journal was vacuumed or
// replaced) makes it fail at once: after cursorTries such failures in a
// row the source drops the cursor and starts again as a first start
// (Since), counted in CursorResets.
func (j *Journal) Run(ctx context.Context, emit func(Entry)) error {
	backoff := j.o.MinBackoff
	failed := 0
	for {
		n, err := j.runOnce(ctx, emit)
		if ctx.Err() != nil {
			return nil
		}
		if n > 0 {
			failed = 0
		} else if failed++; failed >= cursorTries && j.Stats().Cursor != "" {
			j.o.Logger.Warn("journal source: journalctl keeps failing with the saved cursor; dropping it", "cursor", j.Stats().Cursor)
			j.update(func(st *JournalStats) { st.Cursor = ""; st.CursorResets++ })
			failed = 0
		}
		msg := "journalctl exited"
		if err != nil {
			msg = err.Error()
		}
		j.o.Logger.Warn("journal source: restarting journalctl", "err", msg, "backoff", backoff)
		j.update(func(st *JournalStats) { st.Err = msg; st.Restarts++ })
		if n > 0 {
			backoff = j.o.MinBackoff
		}
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
		backoff = min(2*backoff, j.o.MaxBackoff)
	}
}

// matchArgs are the match arguments of Args: units and identifiers,
// joined by "+".
func (j *Journal) matchArgs() []string {
	var args []string
	for _, u := range j.o.Units {
		if len(args) > 0 {
			args = append(args, "+")
		}
		args = append(args, "_SYSTEMD_UNIT="+u)
	}
	for _, id := range j.o.Identifiers {
		if len(args) > 0 {
			args = append(args, "+")
		}
		args = append(args, "SYSLOG_IDENTIFIER="+id)
	}
	return args
}

// Selects reports whether the journal holds any entry the source's
// matches select (journalctl --lines=1, fixed arguments, bounded by ctx):
// false on a host where no such unit or program ever logged, which is
// worth a warning (the unit is named differently, or logs elsewhere).
func (j *Journal) Selects(ctx context.Context) (bool, error) {
	path, err := exec.LookPath(j.o.Command)
	if err != nil {
		return false, fmt.Errorf("journal source: %w", err)
	}
	args := append([]string{"--lines=1", "--output=cat", "--no-pager", "--quiet"}, j.matchArgs()...)
	cmd := exec.CommandContext(ctx, path, args...)
	cmd.WaitDelay = time.Second
	out := &tailBuffer{max: 4096}
	stderr := &tailBuffer{max: maxStderr}
	cmd.Stdout, cmd.Stderr = out, stderr
	if err := cmd.Run(); err != nil {
		return false, fmt.Errorf("journal source: journalctl --lines=1: %w: %s", err, strings.TrimSpace(stderr.String()))
	}
	return strings.TrimSpace(out.String()) != "", nil
}

// runOnce runs journalctl once and returns the entries it delivered.
func (j *Journal) runOnce(ctx context.Context, emit func(Entry)) (int, error) {
	path, err := exec.LookPath(j.o.Command)
	if err != nil {
		return 0, fmt.Errorf("journal source: %w", err)
	}
	cmd := exec.CommandContext(ctx, path, j.Args(j.Stats().Cursor)...)
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = 5 * time.Second
	stderr := &tailBuffer{max: maxStderr}
	cmd.Stderr = stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return 0, fmt.Errorf("journal source: %w", err)
	}
	if err := cmd.Start(); err != nil {
		return 0, fmt.Errorf("journal source: start %s: %w", path, err)
	}
	j.update(func(st *JournalStats) { st.Running = true })
	n := j.readEntries(out, emit)
	err = cmd.Wait()
	j.update(func(st *JournalStats) { st.Running = false })
	if err != nil {
		if s := strings.TrimSpace(stderr.String()); s != "" {
			return n, fmt.Errorf("journal source: journalctl: %w: %s", err, s)
		}
		return n, fmt.Errorf("journal source: journalctl: %w", err)
	}
	if s := strings.TrimSpace(stderr.String()); s != "" {
		return n, fmt.Errorf("journal source: journalctl exited: %s", s)
	}
	return n, nil
}

// readEntries reads JSON lines, each bounded by MaxLine, until EOF.
func (j *Journal) readEntries(r io.Reader, emit func(Entry)) int {
	br := bufio.NewReaderSize(r, 64<<10)
	n := 0
	for {
		line, tooLong, err := readBoundedLine(br, j.o.MaxLine)
		if len(line) > 0 || tooLong {
			if e, ok := j.parse(line, tooLong); ok {
				now := j.o.Now()
				j.update(func(st *JournalStats) {
					st.Entries++
					st.Cursor, st.LastEntry, st.LastRead = e.Cursor, e.Time, now
					if e.Cut {
						st.Cut++
					}
				})
				emit(e)
				n++
			} else {
				j.update(func(st *JournalStats) { st.Dropped++ })
			}
		}
		if err != nil {
			return n
		}
	}
}

// readBoundedLine reads one line without its newline, keeping at most max
// bytes: the rest of a longer line is read and discarded.
func readBoundedLine(br *bufio.Reader, max int) (line []byte, tooLong bool, err error) {
	for {
		chunk, err := br.ReadSlice('\n')
		if len(line)+len(chunk) > max {
			tooLong = true
		} else {
			line = append(line, chunk...)
		}
		if errors.Is(err, bufio.ErrBufferFull) {
			continue
		}
		return bytes.TrimSuffix(line, []byte("\n")), tooLong, err
	}
}

// jsonEntry is the part of journalctl's JSON output the source reads. A
// field is a string, an array of byte values (not UTF-8 or not printable),
// null (longer than 4096 bytes), or an array of those (several values).
type jsonEntry struct {
	Message    json.RawMessage `json:"MESSAGE"`
	Unit       json.RawMessage `json:"_SYSTEMD_UNIT"`
	Identifier json.RawMessage `json:"SYSLOG_IDENTIFIER"`
	PID        json.RawMessage `json:"_PID"`
	UID        json.RawMessage `json:"_UID"`
	Realtime   string          `json:"__REALTIME_TIMESTAMP"`
	Cursor     string          `json:"__CURSOR"`
}

// parse decodes one line. A line that was too long or has no valid cursor
// is dropped.
func (j *Journal) parse(line []byte, tooLong bool) (Entry, bool) {
	if tooLong {
		return Entry{}, false
	}
	var je jsonEntry
	if err := json.Unmarshal(line, &je); err != nil || !ValidCursor(je.Cursor) {
		return Entry{}, false
	}
	e := Entry{Cursor: je.Cursor}
	var ok bool
	if e.Message, ok = field(je.Message); !ok {
		e.Cut = true
	}
	if len(e.Message) > j.o.MaxMessage {
		e.Message, e.Cut = e.Message[:j.o.MaxMessage], true
	}
	e.Unit, _ = field(je.Unit)
	e.Identifier, _ = field(je.Identifier)
	if p, ok := field(je.PID); ok {
		e.PID, _ = strconv.Atoi(p)
	}
	if u, ok := field(je.UID); ok && u == "0" {
		e.Root = true
	}
	if us, err := strconv.ParseInt(je.Realtime, 10, 64); err == nil {
		e.Time = time.UnixMicro(us)
	}
	return e, true
}

// field decodes a single-valued field: a string or an array of bytes. A
// missing, null or multi-valued field is not ok.
func field(raw json.RawMessage) (string, bool) {
	if len(raw) == 0 {
		return "", false
	}
	switch raw[0] {
	case '"':
		var s string
		if json.Unmarshal(raw, &s) == nil {
			return s, true
		}
	case '[':
		var nums []int
		if json.Unmarshal(raw, &nums) != nil {
			return "", false // several values
		}
		b := make([]byte, len(nums))
		for i, n := range nums {
			if n < 0 || n > 255 {
				return "", false
			}
			b[i] = byte(n)
		}
		return string(b), true
	}
	return "", false
}

// tailBuffer keeps the last max bytes written to it.
type tailBuffer struct {
	mu  sync.Mutex
	max int
	b   []byte
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.b = append(t.b, p...)
	if len(t.b) > t.max {
		t.b = append(t.b[:0], t.b[len(t.b)-t.max:]...)
	}
	return len(p), nil
}

func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(t.b)
}
