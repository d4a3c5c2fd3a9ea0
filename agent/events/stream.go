package events

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"slices"
	"time"

	"github.com/parryhq/parry/agent/api"
	"github.com/parryhq/parry/agent/audit"
	"github.com/parryhq/parry/agent/control"
)

// Options are a stream's filter and replay.
type Options struct {
	Kinds     []string  // checked (api.ParseKinds); none: every kind
	Since     time.Time // zero: live only; else replay the audit log's lines from Since first
	AuditPath string    // the audit log (for the replay)
	Log       *slog.Logger
}

// Stream is op events' answer (control.Stream): the answer line's fields,
// then the events.
type Stream struct {
	api.EventsAnswer
	sub   *Sub
	kinds []string
	since time.Time
	path  string
	log   *slog.Logger

	// what the client has been sent
	flushed  uint64 // seq of the last event in a flush that succeeded
	buffered int    // events buffered since
	lastSeq  uint64 // seq of the last event buffered
	sent     int    // events buffered in all
	scratch  []byte
}

var _ control.Stream = (*Stream)(nil)

// Open subscribes (before the answer line is written: an event made after
// the client read it is in the stream) and returns the stream.
func (h *Hub) Open(o Options) *Stream {
	if o.Log == nil {
		o.Log = slog.Default()
	}
	st := &Stream{kinds: o.Kinds, since: o.Since, path: o.AuditPath, log: o.Log}
	st.sub = h.Subscribe(st.wantEvent)
	st.EventsAnswer = api.EventsAnswer{Stream: "events", Seq: h.Seq(), Kinds: o.Kinds, QueueLen: h.QueueLen()}
	if !o.Since.IsZero() {
		st.Replay, st.Since = true, o.Since.UTC().Format(time.RFC3339Nano)
	}
	return st
}

// wantEvent is the filter by name, in the hub (no parsing there).
func (st *Stream) wantEvent(name string) bool {
	if len(st.kinds) == 0 {
		return true
	}
	k := api.KindOf(name)
	return slices.Contains(st.kinds, k) || k == api.KindSignal && slices.Contains(st.kinds, api.KindThreshold)
}

// wantFields finishes the filter for what needs the fields (threshold).
func (st *Stream) wantFields(name string, fields json.RawMessage) bool {
	if name != "signals" || len(st.kinds) == 0 || slices.Contains(st.kinds, api.KindSignal) {
		return true
	}
	return api.CrossedThreshold(fields)
}

// Close ends the subscription.
func (st *Stream) Close() { st.sub.Close() }

// flushAt is how much the stream buffers before it writes.
const flushAt = 64 << 10

// coalesce is how long the stream waits after an event before it takes
// the queue: the events of a burst go in one write.
const coalesce = 20 * time.Millisecond

// Run writes the replay, then the live events, until ctx ends or the
// client stops reading (write timeout): then it tries one last line, the
// count of what it missed.
func (st *Stream) Run(ctx context.Context, w *control.StreamWriter) error {
	replayed := st.Seq
	if !st.since.IsZero() {
		last, err := st.replay(ctx, w)
		if err != nil {
			return st.end(ctx, w, err)
		}
		replayed = max(last, st.Seq)
	}
	st.line(w, api.EventsLive{Live: true, Replayed: st.sent, After: replayed})
	var items []Item
	for {
		items = st.sub.Take(items[:0])
		if len(items) == 0 {
			if err := st.flush(w); err != nil {
				return st.end(ctx, w, err)
			}
			select {
			case <-st.sub.Ready():
			case <-ctx.Done():
				return st.end(ctx, w, ctx.Err())
			}
			// Let a burst gather: one wake-up and one write for many events,
			// not one each (CPU taken from the decision path).
			t := time.NewTimer(coalesce)
			select {
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
				return st.end(ctx, w, ctx.Err())
			}
			continue
		}
		for _, it := range items {
			if it.Missed > 0 && it.MissedMax > replayed { // a gap the replay did not fill
				st.line(w, api.EventsMissed{Missed: it.Missed, After: it.After, Reason: "queue_full"})
			}
			if it.Line != nil && it.Seq > replayed {
				st.live(w, it)
			}
			if w.Buffered() >= flushAt {
				if err := st.flush(w); err != nil {
					return st.end(ctx, w, err)
				}
			}
		}
		clear(items)
	}
}

func (st *Stream) flush(w *control.StreamWriter) error {
	if err := w.Flush(); err != nil {
		return writeErr{err}
	}
	if st.buffered > 0 {
		st.flushed, st.buffered = st.lastSeq, 0
	}
	return nil
}

// end writes the stream's last line, if it can: what the client missed
// when it stopped reading, or why the daemon ended the stream.
func (st *Stream) end(ctx context.Context, w *control.StreamWriter, err error) error {
	var last any
	switch {
	case errors.Is(err, context.Canceled) && ctx.Err() != nil:
		last = api.EventsEnd{End: "closed: the client closed the connection or parryd is stopping"}
	case isWriteErr(err):
		missed := st.buffered + st.sub.Undelivered()
		st.log.Warn("events: subscriber does not read; dropping it", "missed", missed, "err", err)
		last = api.EventsMissed{Missed: missed, After: st.flushed, Reason: "write_timeout"}
	default:
		last = api.EventsEnd{End: err.Error()}
	}
	b, _ := json.Marshal(last)
	if isWriteErr(err) {
		_ = w.Final(append(b, '\n'))
	} else {
		w.Line(append(b, '\n'))
		_ = w.Flush()
	}
	return err
}

// writeErr marks an error writing to the client.
type writeErr struct{ err error }

func (e writeErr) Error() string { return "write: " + e.err.Error() }
func (e writeErr) Unwrap() error { return e.err }

func isWriteErr(err error) bool {
	var we writeErr
	return errors.As(err, &we)
}

// line buffers one of the stream's own lines.
func (st *Stream) line(w *control.StreamWriter, v any) {
	b, _ := json.Marshal(v)
	w.Line(append(b, '\n'))
}

// auditLine is what the stream takes from an audit line.
type auditLine struct {
	Seq    uint64          `json:"seq"`
	Time   string          `json:"time"`
	Event  string          `json:"event"`
	Fields json.RawMessage `json:"fields"`
}

// live buffers the stream line of a live event. The audit log writes its
// lines in one layout (audit.header: seq, time, event, fields, prev, then
// hash); the stream line is cut from it without decoding, the kind put
// before the fields and the chain dropped. Anything else is decoded.
func (st *Stream) live(w *control.StreamWriter, it Item) {
	if it.Event == "signals" && len(st.kinds) > 0 && !slices.Contains(st.kinds, api.KindSignal) {
		st.event(w, it.Line) // the threshold filter reads the fields
		return
	}
	line := it.Line
	prev := bytes.LastIndex(line, []byte(`,"prev":"`))
	head := bytes.Index(line, []byte(`,"fields":`))
	if head < 0 || head > prev {
		head = prev // no fields
	}
	if prev < 0 || !bytes.HasPrefix(line, []byte(`{"seq":`)) || !bytes.HasSuffix(line, []byte("\"}\n")) {
		st.event(w, line)
		return
	}
	b := append(st.scratch[:0], line[:head]...)
	b = append(b, `,"kind":"`...)
	b = append(b, api.KindOf(it.Event)...)
	b = append(b, '"')
	b = append(b, line[head:prev]...)
	b = append(b, "}\n"...)
	w.Line(b)
	st.scratch = b
	st.buffered++
	st.sent++
	st.lastSeq = it.Seq
}

// event buffers the stream line of one audit line, if the filter wants it.
func (st *Stream) event(w *control.StreamWriter, line []byte) {
	var a auditLine
	if err := json.Unmarshal(line, &a); err != nil || a.Seq == 0 {
		return // not an audit line: verify reports it
	}
	st.emit(w, a)
}

func (st *Stream) emit(w *control.StreamWriter, a auditLine) {
	if !st.wantEvent(a.Event) || !st.wantFields(a.Event, a.Fields) {
		return
	}
	b, err := json.Marshal(api.Event{Seq: a.Seq, Time: a.Time, Event: a.Event, Kind: api.KindOf(a.Event), Fields: a.Fields})
	if err != nil {
		return
	}
	w.Line(append(b, '\n'))
	st.buffered++
	st.sent++
	st.lastSeq = a.Seq
}

// maxReplayLine bounds one audit line read by the replay; a longer one is
// skipped (and counted missed).
const maxReplayLine = 64 << 20

// replay writes the audit log's events since st.since and returns the seq
// of the last line it read: the live events up to it are dropped as
// duplicates.
func (st *Stream) replay(ctx context.Context, w *control.StreamWriter) (uint64, error) {
	f, err := audit.OpenSince(st.path, st.since)
	if errors.Is(err, fs.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("replay: %w", err)
	}
	defer f.Close()
	br := bufio.NewReaderSize(f, 256<<10)
	var last uint64
	var long []byte
	tooLong, skipped := false, 0
	for {
		line, err := br.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			if !tooLong {
				if tooLong = len(long)+len(line) > maxReplayLine; tooLong {
					long = long[:0]
				} else {
					long = append(long, line...)
				}
			}
			continue
		}
		switch {
		case tooLong:
			tooLong, line = false, nil
			skipped++
		case len(long) > 0:
			line = append(long, line...)
			long = long[:0]
		}
		if len(line) > 0 && line[len(line)-1] == '\n' {
			if seq, ok := st.replayLine(w, line); ok {
				last = max(last, seq)
			}
		}
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return last, fmt.Errorf("replay: %w", err)
		}
		if w.Buffered() >= flushAt {
			if ctx.Err() != nil {
				return last, ctx.Err()
			}
			if err := st.flush(w); err != nil {
				return last, err
			}
		}
	}
	if skipped > 0 {
		st.line(w, api.EventsMissed{Missed: skipped, After: last, Reason: "line_too_long"})
	}
	return last, st.flush(w)
}

// replayLine buffers one audit line read from the log if it is from
// st.since on; it returns its seq (false: not an audit line, a torn tail).
func (st *Stream) replayLine(w *control.StreamWriter, line []byte) (uint64, bool) {
	var a auditLine
	if err := json.Unmarshal(line, &a); err != nil || a.Seq == 0 {
		return 0, false
	}
	if t, err := time.Parse(time.RFC3339Nano, a.Time); err == nil && t.Before(st.since) {
		return a.Seq, true
	}
	st.emit(w, a)
	return a.Seq, true
}
