package audit

import (
	"bytes"
	"compress/gzip"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strings"
	"sync"
	"time"
)

// Rotation and maintenance.
//
// Rotation (under the log's lock, before the append that finds the
// current segment at or past Config.MaxSize):
//
//  1. fsync the current segment;
//  2. write the new segment's first line, a segment_start chained to the
//     last line, to <current>.new and fsync it;
//  3. rename the current file to <stem>-<its first seq><ext>, then
//     <current>.new to the current name, and fsync the directory.
//
// A crash before the first rename leaves the old current file in place and
// a <current>.new that Open removes (the next append rotates again); a
// crash between the renames leaves <current>.new alone, which Open renames
// (readers take it as the current file meanwhile).
//
// Maintenance (in the background, after a rotation and once an hour, or
// Maintain): old segments are gzipped (to <name>.gz.tmp, fsync, rename,
// then the plain file removed), and retention removes the oldest segments
// beyond Config.Keep or closed longer ago than Config.MaxAge. A removal is
// first recorded — a segment_removed line in the current segment with the
// segment's name, seq range and final hash, read from the segment_start
// line of the segment after it — and fsync'd, then the file is removed. A
// crash between the two leaves the file, removed (and recorded again) at
// the next maintenance.

const (
	rotateRetry   = time.Minute // after a failed rotation
	maintainEvery = time.Hour   // retention by age in a quiet log
	tmpSuffix     = ".tmp"
)

// errCrash is returned by a test's crash hook: the rotation stops there,
// leaving the files as a crash would.
var errCrash = errors.New("audit: injected crash")

// segmentStart is the fields of a segment_start line.
type segmentStart struct {
	Previous         string `json:"previous"`
	PreviousFirstSeq uint64 `json:"previous_first_seq"`
	PreviousLastSeq  uint64 `json:"previous_last_seq"`
	PreviousHash     string `json:"previous_hash"`
}

// rotation is the state of rotation, under Log.mu.
type rotation struct {
	err   error     // the last rotation failure, nil once one succeeds
	retry time.Time // no new attempt before this
	count int       // rotations done by this Log
}

// SetConfig changes rotation and retention (zero values: defaults) from
// the next append and the next maintenance on: a config reload.
func (l *Log) SetConfig(cfg Config) {
	l.mu.Lock()
	l.cfg = cfg.WithDefaults()
	l.mu.Unlock()
}

// RotateError is the last rotation failure, or nil once a rotation
// succeeded (the log keeps appending to the current segment meanwhile).
func (l *Log) RotateError() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.rot.err
}

// step runs the test's crash hook at a step of the rotation.
func (l *Log) step(name string) error {
	if l.crashAt != nil {
		return l.crashAt(name)
	}
	return nil
}

// maybeRotateLocked rotates when the current segment is full. A failed
// rotation is remembered and the append goes on in the current segment;
// only a test's injected crash is returned. Caller holds l.mu.
func (l *Log) maybeRotateLocked() error {
	if l.size == 0 || l.size < int64(l.cfg.MaxSize) {
		return nil
	}
	now := l.now()
	if now.Before(l.rot.retry) {
		return nil
	}
	l.rot.err = nil
	if err := l.rotateLocked(); errors.Is(err, errCrash) {
		return err
	} else if err != nil {
		l.rot.err, l.rot.retry = err, now.Add(rotateRetry)
		return nil
	}
	l.rot.count++
	l.maint.kick(l)
	return nil
}

// rotateLocked closes the current segment and starts the next (see the
// top of the file). Caller holds l.mu.
func (l *Log) rotateLocked() error {
	cur := l.p.current()
	next := cur + newSuffix
	old := l.p.segName(l.first, false)
	if err := l.f.Sync(); err != nil {
		return fmt.Errorf("rotate: sync: %w", err)
	}
	nf, err := l.openFile(next, true)
	if err != nil {
		return fmt.Errorf("rotate: %w", err)
	}
	abandon := func(err error) error {
		nf.Close()
		os.Remove(next)
		return fmt.Errorf("rotate: %w", err)
	}
	if err := l.step("created"); err != nil {
		return err
	}
	st := segmentStart{Previous: old, PreviousFirstSeq: l.first, PreviousLastSeq: l.seq, PreviousHash: l.prev}
	line, seq, prev, _, err := l.render(nil, l.seq, l.prev, []Event{{Name: EventSegmentStart, Fields: st}})
	if err != nil {
		return abandon(err)
	}
	if n, err := nf.Write(line); err != nil || n != len(line) {
		return abandon(errors.Join(err, io.ErrShortWrite))
	}
	if err := nf.Sync(); err != nil {
		return abandon(err)
	}
	if err := l.step("written"); err != nil {
		return err
	}
	if err := os.Rename(cur, l.p.file(old)); err != nil {
		return abandon(err)
	}
	if err := l.step("renamed"); err != nil {
		return err
	}
	// From here the new file is the current segment, even if its rename
	// fails: Open finishes it, and readers take <current>.new meanwhile.
	rerr := os.Rename(next, cur)
	derr := syncDir(l.p.dir)
	l.f.Close()
	l.f = nf
	l.size, l.lastAt, l.first = int64(len(line)), 0, seq
	l.seq, l.prev, l.dirty = seq, prev, true
	if err := errors.Join(rerr, derr); err != nil {
		l.rot.err = fmt.Errorf("rotate: %w", err)
	}
	return nil
}

// finishRotation completes or undoes a rotation a crash interrupted (see
// the top of the file).
func (l *Log) finishRotation() error {
	cur := l.p.current()
	next := cur + newSuffix
	if _, err := os.Stat(next); errors.Is(err, fs.ErrNotExist) {
		return nil
	} else if err != nil {
		return err
	}
	switch _, err := os.Stat(cur); {
	case err == nil: // the current file was never renamed: no rotation happened
		if err := os.Remove(next); err != nil {
			return fmt.Errorf("undo an interrupted rotation: %w", err)
		}
	case errors.Is(err, fs.ErrNotExist):
		if err := os.Rename(next, cur); err != nil {
			return fmt.Errorf("finish an interrupted rotation: %w", err)
		}
	default:
		return err
	}
	return syncDir(l.p.dir)
}

// continueSegment starts an empty current file: after the newest old
// segment (a segment_start line) if there is one, else at seq 1.
func (l *Log) continueSegment() error {
	segs, err := Segments(l.p.current())
	if err != nil {
		return err
	}
	var s *Segment
	for i := range segs {
		if !segs[i].Current {
			s = &segs[i]
		}
	}
	if s == nil {
		l.first = 1
		return nil
	}
	last, err := segmentLast(l.p, *s)
	if err != nil {
		return fmt.Errorf("continue after %s: %w", s.Name, err)
	}
	l.seq, l.prev = s.First-1, Genesis // a segment without a whole line: verify reports it
	if last != nil {
		l.seq, l.prev = lineEnd(last)
	}
	st := segmentStart{Previous: s.Name, PreviousFirstSeq: s.First, PreviousLastSeq: l.seq, PreviousHash: l.prev}
	line, seq, prev, _, err := l.render(nil, l.seq, l.prev, []Event{{Name: EventSegmentStart, Fields: st}})
	if err != nil {
		return err
	}
	if n, err := l.f.Write(line); err != nil || n != len(line) {
		l.f.Truncate(0)
		return fmt.Errorf("continue after %s: write: %w", s.Name, errors.Join(err, io.ErrShortWrite))
	}
	l.size, l.lastAt, l.first = int64(len(line)), 0, seq
	l.seq, l.prev, l.dirty = seq, prev, true
	return nil
}

// segmentLast is the last whole line of an old segment (nil: none).
func segmentLast(p logPath, s Segment) ([]byte, error) {
	if !s.Compressed {
		f, err := os.Open(p.file(s.Name))
		if err != nil {
			return nil, err
		}
		defer f.Close()
		st, err := f.Stat()
		if err != nil {
			return nil, err
		}
		last, _, _, err := findLast(f, st.Size())
		return last, err
	}
	r, err := openSegment(p, s)
	if err != nil {
		return nil, err
	}
	defer r.Close()
	var last, cur []byte
	buf := make([]byte, 256<<10)
	for {
		n, err := r.Read(buf)
		for b := buf[:n]; len(b) > 0; {
			i := bytes.IndexByte(b, '\n')
			if i < 0 {
				cur = append(cur, b...)
				break
			}
			cur = append(cur, b[:i]...)
			last, cur = append(last[:0], cur...), cur[:0]
			b = b[i+1:]
		}
		if errors.Is(err, io.EOF) {
			if len(last) == 0 {
				return nil, nil
			}
			return last, nil
		}
		if err != nil {
			return nil, err
		}
	}
}

// maintenance runs compression and retention, one at a time, in a
// goroutine of its own started by the first kick.
type maintenance struct {
	mu sync.Mutex // serializes maintain

	state   sync.Mutex // guards the fields below
	started bool
	manual  bool // tests: no background runs, only Maintain
	stopped bool
	kickc   chan struct{}
	stopc   chan struct{}
	done    chan struct{}
	last    time.Time // start of the last maintenance (zero: none yet)
	anchor  Anchor    // the last line made durable
	err     error     // of the last maintenance
}

// kick asks for a maintenance run in the background.
func (m *maintenance) kick(l *Log) {
	m.state.Lock()
	defer m.state.Unlock()
	if m.manual || m.stopc == nil || m.stopped {
		return
	}
	if !m.started {
		m.started = true
		go m.run(l)
	}
	select {
	case m.kickc <- struct{}{}:
	default:
	}
}

// kickIfDue kicks when no maintenance ran for maintainEvery (or none yet).
func (m *maintenance) kickIfDue(l *Log) {
	m.state.Lock()
	due := m.last.IsZero() || l.now().Sub(m.last) >= maintainEvery
	m.state.Unlock()
	if due {
		m.kick(l)
	}
}

func (m *maintenance) synced(a Anchor) {
	m.state.Lock()
	m.anchor = a
	m.state.Unlock()
}

// start prepares the maintenance of l (opened at seq); nothing runs yet.
func (m *maintenance) start(l *Log) {
	m.state.Lock()
	defer m.state.Unlock()
	m.kickc, m.stopc, m.done = make(chan struct{}, 1), make(chan struct{}), make(chan struct{})
	m.anchor = Anchor{Seq: l.seq}
}

func (m *maintenance) run(l *Log) {
	defer close(m.done)
	for {
		select {
		case <-m.stopc:
			return
		case <-m.kickc:
			err := l.maintain(m.stopc)
			m.state.Lock()
			m.err = err
			m.state.Unlock()
		}
	}
}

// stop ends the background maintenance and waits for it.
func (m *maintenance) stop() {
	m.state.Lock()
	wait := m.started && !m.stopped
	if m.stopc != nil && !m.stopped {
		close(m.stopc)
	}
	m.stopped = true
	m.state.Unlock()
	if wait {
		<-m.done
	}
}

// MaintainError is the error of the last background maintenance, or nil.
func (l *Log) MaintainError() error {
	l.maint.state.Lock()
	defer l.maint.state.Unlock()
	return l.maint.err
}

// Maintain compresses the old segments and applies retention now. The log
// runs it in the background after each rotation and once an hour.
func (l *Log) Maintain() error { return l.maintain(nil) }

var errStopped = errors.New("audit: maintenance stopped")

func (l *Log) maintain(stop <-chan struct{}) error {
	m := &l.maint
	m.mu.Lock()
	defer m.mu.Unlock()
	m.state.Lock()
	m.last = l.now()
	m.state.Unlock()
	segs, err := Segments(l.p.current())
	if err != nil {
		return fmt.Errorf("audit maintenance: %w", err)
	}
	l.removeTemps()
	l.mu.Lock()
	cfg := l.cfg
	l.mu.Unlock()
	var errs []error
	if cfg.compress() {
		for i, s := range segs {
			if s.Current || s.Compressed {
				continue
			}
			if err := l.compress(s, stop); err != nil {
				errs = append(errs, err)
				break
			}
			segs[i].Name, segs[i].Compressed = l.p.segName(s.First, true), true
		}
	}
	if err := l.retain(segs, cfg); err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("audit maintenance: %w", err)
	}
	return nil
}

// removeTemps removes compressions a crash or a stop left unfinished.
func (l *Log) removeTemps() {
	ents, err := os.ReadDir(l.p.dir)
	if err != nil {
		return
	}
	for _, e := range ents {
		name, ok := strings.CutSuffix(e.Name(), tmpSuffix)
		if _, gz, seg := l.p.parse(name); ok && seg && gz {
			os.Remove(l.p.file(e.Name()))
		}
	}
}

// compress gzips an old segment beside it, then removes the plain file.
func (l *Log) compress(s Segment, stop <-chan struct{}) error {
	src := l.p.file(s.Name)
	gzName := l.p.segName(s.First, true)
	tmp := l.p.file(gzName + tmpSuffix)
	in, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("compress %s: %w", s.Name, err)
	}
	defer in.Close()
	out, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("compress %s: %w", s.Name, err)
	}
	fail := func(err error) error {
		out.Close()
		os.Remove(tmp)
		return fmt.Errorf("compress %s: %w", s.Name, err)
	}
	zw := gzip.NewWriter(out)
	zw.Name = s.Name
	buf := make([]byte, 1<<20)
	for {
		select {
		case <-stop:
			return fail(errStopped)
		default:
		}
		n, rerr := in.Read(buf)
		if n > 0 {
			if _, err := zw.Write(buf[:n]); err != nil {
				return fail(err)
			}
		}
		if errors.Is(rerr, io.EOF) {
			break
		}
		if rerr != nil {
			return fail(rerr)
		}
	}
	if err := zw.Close(); err != nil {
		return fail(err)
	}
	if err := out.Sync(); err != nil {
		return fail(err)
	}
	if err := out.Close(); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("compress %s: %w", s.Name, err)
	}
	if err := os.Rename(tmp, l.p.file(gzName)); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("compress %s: %w", s.Name, err)
	}
	if err := syncDir(l.p.dir); err != nil {
		return fmt.Errorf("compress %s: %w", s.Name, err)
	}
	if err := os.Remove(src); err != nil {
		return fmt.Errorf("compress %s: remove the plain file: %w", s.Name, err)
	}
	return syncDir(l.p.dir)
}

// retain removes the oldest segments beyond Keep or older than MaxAge,
// recording each removal first. segs is Segments' list (old ones, then the
// current); cfg is the log's config when the maintenance started.
func (l *Log) retain(segs []Segment, cfg Config) error {
	l.maint.state.Lock()
	anchor := l.maint.anchor
	l.maint.state.Unlock()
	old := 0
	for _, s := range segs {
		if !s.Current {
			old++
		}
	}
	now := l.now()
	for i := 0; i < old && i+1 < len(segs); i++ {
		s := segs[i]
		byCount := cfg.Keep >= 0 && old-i > cfg.Keep
		head, err := firstLine(l.p, segs[i+1])
		if err != nil {
			return fmt.Errorf("retention: %w", err)
		}
		var next struct {
			Event  string       `json:"event"`
			Fields segmentStart `json:"fields"`
		}
		closed, _ := lineTime(head)
		byAge := cfg.MaxAge > 0 && !closed.IsZero() && now.Sub(closed) > cfg.MaxAge.D()
		if !byCount && !byAge {
			return nil
		}
		if json.Unmarshal(head, &next) != nil || next.Event != EventSegmentStart || next.Fields.PreviousFirstSeq != s.First {
			return fmt.Errorf("retention: %s does not start by naming %s: not removed (run parry audit verify)", segs[i+1].Name, s.Name)
		}
		if next.Fields.PreviousLastSeq >= anchor.Seq {
			return nil // not durable yet: the store's anchor may be in it
		}
		reason := "keep"
		if !byCount {
			reason = "max_age"
		}
		rec := Removed{Segment: s.Name, FirstSeq: s.First, LastSeq: next.Fields.PreviousLastSeq,
			LastHash: next.Fields.PreviousHash, Reason: reason}
		if err := l.Append(EventSegmentRemoved, rec); err != nil {
			return fmt.Errorf("retention: record the removal of %s: %w", s.Name, err)
		}
		if err := l.Sync(); err != nil {
			return fmt.Errorf("retention: record the removal of %s: %w", s.Name, err)
		}
		for _, n := range []string{s.Name, l.p.segName(s.First, false), l.p.segName(s.First, true)} {
			if err := os.Remove(l.p.file(n)); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return fmt.Errorf("retention: remove %s: %w", n, err)
			}
		}
		if err := syncDir(l.p.dir); err != nil {
			return fmt.Errorf("retention: %w", err)
		}
	}
	return nil
}
