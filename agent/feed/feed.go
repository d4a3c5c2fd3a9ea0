// Package feed reads blocklist feeds — a file or an HTTP(S) URL holding
// one address or CIDR per line — and turns each refresh into a diff
// against the last good state: entries to add, to remove and to renew.
//
// The package fetches, parses and diffs; it does not block anything. The
// daemon applies an Update through its decision path (guard, store,
// kernel, audit: one transaction), then calls Commit, and stores
// State.MarshalBinary so the last good state survives a restart. Carving
// the allowlist, loopback, link-local and own addresses out of broad
// entries is the daemon's (the firewall's union); this package only
// normalises and enforces the feed's own broadest prefix (min_prefix).
package feed

import (
	"context"
	"crypto/x509"
	"encoding/binary"
	"net/http"

	"fmt"
	"sync"
	"sync/atomic"
	"time"
)

// State is a feed's last good state: its entries and what is needed to
// ask the source whether they changed. It is immutable once made.
type State struct {
	Source       string    // the url or path it came from
	Set          *Set      // entries
	ETag         string    // HTTP validators sent back on the next request
	LastModified string    //
	ModTime      time.Time // file feeds: the file's mtime and size when read
	Size         int64     //
	Sum          [32]byte  // sha256 of the body or file
	Success      time.Time // last fetch that gave or confirmed these entries
	Changed      time.Time // last time the entries changed
}

const stateMagic = "PRFEED1\n"

// MarshalBinary encodes the state compactly (see Set: about 4 bytes per
// IPv4 entry, 17 per IPv6 entry, plus a few hundred bytes of header).
func (s *State) MarshalBinary() ([]byte, error) {
	n := 128 + len(s.Source) + len(s.ETag) + len(s.LastModified)
	if s.Set != nil {
		n += 5*s.Set.Len4() + 17*s.Set.Len6()
	}
	b := append(make([]byte, 0, n), stateMagic...)
	for _, str := range []string{s.Source, s.ETag, s.LastModified} {
		b = binary.AppendUvarint(b, uint64(len(str)))
		b = append(b, str...)
	}
	for _, t := range []time.Time{s.ModTime, s.Success, s.Changed} {
		b = binary.AppendVarint(b, unixNano(t))
	}
	b = binary.AppendVarint(b, s.Size)
	b = append(b, s.Sum[:]...)
	set := s.Set
	if set == nil {
		set = &Set{}
	}
	return set.appendBinary(b), nil
}

func unixNano(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

func fromUnixNano(n int64) time.Time {
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n)
}

// UnmarshalBinary decodes what MarshalBinary wrote, checking it.
func (s *State) UnmarshalBinary(b []byte) error {
	if len(b) < len(stateMagic) || string(b[:len(stateMagic)]) != stateMagic {
		return fmt.Errorf("%w: bad magic", errCorrupt)
	}
	b = b[len(stateMagic):]
	var strs [3]string
	for i := range strs {
		n, m := binary.Uvarint(b)
		if m <= 0 || n > 4096 || uint64(len(b)-m) < n {
			return errCorrupt
		}
		strs[i] = string(b[m : m+int(n)])
		b = b[m+int(n):]
	}
	var ints [4]int64
	for i := range ints {
		v, m := binary.Varint(b)
		if m <= 0 {
			return errCorrupt
		}
		ints[i] = v
		b = b[m:]
	}
	if len(b) < 32 {
		return errCorrupt
	}
	var sum [32]byte
	copy(sum[:], b)
	set, rest, err := decodeSet(b[32:])
	if err != nil {
		return err
	}
	if len(rest) != 0 {
		return fmt.Errorf("%w: trailing bytes", errCorrupt)
	}
	*s = State{
		Source: strs[0], ETag: strs[1], LastModified: strs[2],
		ModTime: fromUnixNano(ints[0]), Success: fromUnixNano(ints[1]), Changed: fromUnixNano(ints[2]),
		Size: ints[3], Sum: sum, Set: set,
	}
	return nil
}

// Status is what `parry feed list` shows of a feed.
type Status struct {
	Name        string    `json:"name"`
	Source      string    `json:"source"`
	Entries     int       `json:"entries"` // entries of the last good state
	Entries4    int       `json:"entries_v4"`
	Entries6    int       `json:"entries_v6"`
	LastRefresh time.Time `json:"last_refresh,omitzero"` // last attempt, good or not
	LastSuccess time.Time `json:"last_success,omitzero"`
	LastChange  time.Time `json:"last_change,omitzero"`
	Next        time.Time `json:"next,omitzero"`
	LastError   string    `json:"last_error,omitempty"` // empty after a success
	Failures    int       `json:"failures"`             // consecutive failed refreshes
	Stale       bool      `json:"stale"`                // failing for longer than max_stale: entries no longer renewed
	Report      Report    `json:"report"`               // counts of the last parse
}

// Update is the outcome of one Fetch. The daemon applies Diff — adds
// Added, removes Removed, renews Kept — with expiry Expires, as one
// transaction, then calls Commit with the result.
type Update struct {
	Diff        Diff
	Expires     time.Time // now + for: the expiry of added and kept entries
	NotModified bool      // 304, or a file with the same content
	Err         error     // the fetch failed: Diff only renews the last good state (or nothing when stale)
	Report      Report

	base  *State // state the diff was computed against
	state *State // state after the update (nil when Err is set)
	at    time.Time
}

// State is the state u leads to: the caller stores it (MarshalBinary) in
// the same transaction as the blocks of the diff. It is nil when the
// fetch failed (the last good state stays).
func (u *Update) State() *State { return u.state }

// Options are the parts a Feed gets from outside.
type Options struct {
	Now     func() time.Time // nil: time.Now
	RootCAs *x509.CertPool   // nil: the system's roots
}

// Feed is one configured feed. It owns its last good state and status;
// Fetch and Commit are meant for one goroutine (a second concurrent Fetch
// gets ErrBusy), Status and State may be called from any.
type Feed struct {
	cfg    Config
	now    func() time.Time
	client *http.Client
	busy   atomic.Bool

	mu    sync.Mutex
	state *State // last good, committed; nil before the first success
	st    Status
}

// New makes a Feed from a config; cfg gets its defaults and is validated.
func New(cfg Config, o Options) (*Feed, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	f := &Feed{cfg: cfg, now: o.Now}
	if f.now == nil {
		f.now = time.Now
	}
	if cfg.URL != "" {
		f.client = newClient(o.RootCAs)
	}
	f.st = Status{Name: cfg.Name, Source: f.source()}
	return f, nil
}

func (f *Feed) source() string {
	if f.cfg.URL != "" {
		return f.cfg.URL
	}
	return f.cfg.Path
}

// Config returns the feed's completed config.
func (f *Feed) Config() Config { return f.cfg }

// Restore installs a persisted last good state (from State.UnmarshalBinary)
// before the first Fetch. A state from another source keeps its entries
// (the next diff removes what the new source lacks) but not its
// validators.
func (f *Feed) Restore(s *State) {
	if s == nil {
		return
	}
	c := *s
	if c.Source != f.source() {
		c.Source, c.ETag, c.LastModified, c.ModTime, c.Size, c.Sum = "", "", "", time.Time{}, 0, [32]byte{}
	}
	if c.Set == nil {
		c.Set = &Set{}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.state = &c
	f.st.LastSuccess, f.st.LastChange = c.Success, c.Changed
	f.setCounts()
	// Not at once after every restart: the kernel entries were given
	// now+for at the last apply, and the store re-asserts them.
	f.st.Next = c.Success.Add(f.cfg.Refresh.D())
}

func (f *Feed) setCounts() {
	if f.state != nil {
		f.st.Entries, f.st.Entries4, f.st.Entries6 = f.state.Set.Len(), f.state.Set.Len4(), f.state.Set.Len6()
	}
}

// State returns the last good state (nil before any), for the caller to
// persist after Commit.
func (f *Feed) State() *State {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.state
}

// Status returns a copy of the feed's status.
func (f *Feed) Status() Status {
	f.mu.Lock()
	defer f.mu.Unlock()
	st := f.st
	st.Report.Bad = append([]BadLine(nil), st.Report.Bad...)
	return st
}

// Next is when the feed should be refreshed next.
func (f *Feed) Next() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.st.Next
}

// Fetch asks the source for the feed and returns the Update to apply. It
// never changes the last good state: Commit does. On failure the returned
// error is also in Update.Err and the Update renews the last good state's
// entries (Kept), unless the last success is older than max_stale; a
// failing feed thus keeps blocking what it last listed, and says so in its
// status. Fetch is bounded by the feed's timeout and max_size.
func (f *Feed) Fetch(ctx context.Context) (*Update, error) {
	if !f.busy.CompareAndSwap(false, true) {
		return nil, ErrBusy
	}
	defer f.busy.Store(false)
	f.mu.Lock()
	last := f.state
	f.mu.Unlock()
	now := f.now()

	var got fetched
	var err error
	if f.cfg.URL != "" {
		got, err = f.fetchHTTP(ctx, last)
	} else {
		got, err = f.fetchFile(last)
	}
	if err == nil && !got.notModified && got.set.Len() == 0 && last != nil && last.Set.Len() > 0 {
		err = fmt.Errorf("%w: no entries, where the last good state had %d", ErrEmpty, last.Set.Len())
	}
	u := &Update{base: last, at: now, Expires: now.Add(f.cfg.For.D()), Report: got.report}
	if err != nil {
		u.Err = fmt.Errorf("feed %s: %w", f.cfg.Name, err)
		if last != nil && now.Sub(last.Success) <= f.cfg.MaxStale.D() {
			u.Diff = Compare(last.Set, last.Set) // renew all, change nothing
		} else {
			u.Diff = Compare(nil, nil)
		}
		f.failed(now, u.Err, got.report)
		return u, u.Err
	}
	next := &State{Source: f.source(), Success: now, ETag: got.etag, LastModified: got.lastMod,
		ModTime: got.modTime, Size: got.size, Sum: got.sum}
	switch {
	case got.notModified:
		u.NotModified = true
		next.Set, next.Changed = last.Set, last.Changed
		if f.cfg.URL != "" {
			next.ModTime, next.Size, next.Sum = last.ModTime, last.Size, last.Sum
		}
	default:
		next.Set, next.Changed = got.set, now
	}
	var old *Set
	if last != nil {
		old = last.Set
	}
	u.Diff = Compare(old, next.Set)
	if last != nil && !u.Diff.Changed() {
		next.Changed = last.Changed
	}
	u.state = next
	return u, nil
}

func (f *Feed) failed(now time.Time, err error, rep Report) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.st.LastRefresh = now
	f.st.LastError = err.Error()
	f.st.Failures++
	f.st.Stale = f.state != nil && now.Sub(f.state.Success) > f.cfg.MaxStale.D()
	if rep.Lines > 0 {
		f.st.Report = rep
	}
	// Retry sooner than the refresh interval: 1m, 2m, 4m ... up to it.
	retry := time.Minute << min(f.st.Failures-1, 20)
	f.st.Next = now.Add(min(retry, f.cfg.Refresh.D()))
}

// Commit records the outcome of applying u. With applyErr nil, u's state
// becomes the last good state (for an Update that carries Err, nothing
// changes but the status); with applyErr set, the last good state stays
// and the status shows the error. Commit returns ErrConflict if another
// Update was committed since u was fetched.
func (f *Feed) Commit(u *Update, applyErr error) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if u.base != f.state {
		return ErrConflict
	}
	if u.Err != nil {
		return nil
	}
	f.st.LastRefresh = u.at
	if applyErr != nil {
		f.st.LastError = fmt.Sprintf("feed %s: apply: %v", f.cfg.Name, applyErr)
		f.st.Failures++
		f.st.Next = u.at.Add(min(time.Minute<<min(f.st.Failures-1, 20), f.cfg.Refresh.D()))
		return nil
	}
	f.state = u.state
	f.setCounts()
	f.st.LastSuccess, f.st.LastChange = u.state.Success, u.state.Changed
	f.st.LastError, f.st.Failures, f.st.Stale = "", 0, false
	if !u.NotModified {
		f.st.Report = u.Report
	}
	f.st.Next = u.at.Add(f.cfg.Refresh.D())
	return nil
}
