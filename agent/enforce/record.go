package enforce

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/parryhq/parry/agent/api"
	"github.com/parryhq/parry/agent/audit"
	"github.com/parryhq/parry/agent/store"
)

// The audit trail of store changes: the store and the audit log agree after
// any crash.
//
// The audit line of a change to the store (block, unblock, lockdown,
// release) is encoded before the change is committed, and committed with it
// in the same bbolt transaction as a pending record (store.Pending). The
// daemon then writes the line; a pending record is deleted only when the
// fsync of the audit log has made its line durable (in the same
// transaction that saves the audit anchor, at most once a second, so no
// extra fsync per request). At start, every pending record left is looked
// for in the audit log after the anchor — the exact fields, byte for byte —
// and the ones missing, which were committed but never written (kill -9, a
// crash or power loss between the commit and the write or the sync), are
// written then, marked "recovered": true with the original time in
// "decided_at". Writing the line first and committing second would instead
// leave lines for changes that never happened, and could not be undone on a
// full disk; committing the two together is what this does, with the store
// as the one transactional side.
//
// When the audit write fails (a full disk, an I/O error), the change is
// undone in the store (which also drops its pending record) and the
// kernel, and the request fails with CodeAudit.

// auditEvent is one audit line of a store change, before it is encoded.
type auditEvent struct {
	name   string
	fields map[string]any
}

// Record is the audit log as the daemon writes it: every part's events
// (Audit), and the trail of the decision path's store changes (stage,
// write, OnSync, Recover). It owns the trail's state under its own lock,
// mu: the fsync callback runs outside the path's lock.
type Record struct {
	log    *audit.Log
	logger *slog.Logger
	store  *store.Store
	now    func() time.Time

	mu sync.Mutex // guards next, written, lost and syncFailed
	// syncFailed is the first failed fsync of a group's lines: final.
	syncFailed error
	next       uint64        // key of the next pending record
	written    []writtenLine // written, waiting for the fsync that makes them durable
	// lost are records found at start without their audit line, whose
	// recovery failed (the audit log was not writable); retried by the
	// maintenance loop.
	lost []store.Pending
}

// KeyAuditAnchor is the store key of the audit anchor, the last line
// known durable in audit.log.
const KeyAuditAnchor = "audit/anchor"

// AuditAnchor is the last line known durable in audit.log: seq, hash,
// and where it is (segment and offset), so the check at start reads only
// the tail after it.
type AuditAnchor = audit.Anchor

type writtenLine struct{ key, seq uint64 }

// NewRecord returns the record of store st; Use gives it its audit log.
// OnSync may be wired to the log before Use.
func NewRecord(st *store.Store, logger *slog.Logger, now func() time.Time) *Record {
	return &Record{store: st, logger: logger, now: now}
}

// Use sets the audit log the record appends to.
func (r *Record) Use(al *audit.Log) { r.log = al }

// Audit appends an event to the audit log (and the structured log). An
// error (wrapping audit.ErrFailed) means the line was not written; it is
// logged, and status reports the failure while it lasts. Requests that
// change the store check their audit write through the trail instead
// (stage and write), and fail when it fails.
func (r *Record) Audit(event string, fields map[string]any) error {
	if err := r.log.Append(event, fields); err != nil {
		r.logger.Error("audit append failed", "event", event, "err", err)
		return err
	}
	r.logAudit(event, fields)
	return nil
}

// logAudit writes an audit event to the structured log.
func (r *Record) logAudit(event string, fields map[string]any) {
	attrs := make([]any, 0, 2*len(fields)+2)
	attrs = append(attrs, "event", event)
	for k, v := range fields {
		if k == "targets" { // can be thousands; the audit log has them
			if s, ok := v.([]string); ok && len(s) > 8 {
				v = fmt.Sprintf("%d targets", len(s))
			}
		}
		attrs = append(attrs, k, v)
	}
	r.logger.Info("audit", attrs...)
}

// stage encodes events as pending records added to ch (and their
// deletion to undo); it returns the events ready for the log and the keys.
// Caller holds dp.mu.
func (r *Record) stage(ch, undo *store.Change, events []auditEvent) ([]audit.Event, []uint64, error) {
	evs := make([]audit.Event, len(events))
	keys := make([]uint64, len(events))
	now := r.now().UTC()
	r.mu.Lock()
	defer r.mu.Unlock()
	for i, ev := range events {
		b, err := json.Marshal(ev.fields)
		if err != nil {
			return nil, nil, api.Errorf(api.CodeInternal, "audit %s: encode: %v", ev.name, err)
		}
		keys[i] = r.next
		r.next++
		evs[i] = audit.Event{Name: ev.name, Fields: audit.Raw(b)}
		ch.PutPending = append(ch.PutPending, store.Pending{Key: keys[i], Event: ev.name, Time: now, Fields: b})
		undo.DelPending = append(undo.DelPending, keys[i])
	}
	return evs, keys, nil
}

// write appends the staged lines of a committed change with one
// write. An error is a CodeAudit *Error: the caller undoes the change.
func (r *Record) write(events []auditEvent, evs []audit.Event, keys []uint64) error {
	if evs == nil { // not staged: nothing in the store to recover
		evs = make([]audit.Event, len(events))
		for i, ev := range events {
			evs[i] = audit.Event{Name: ev.name, Fields: ev.fields}
		}
	}
	r.mu.Lock()
	failed := r.syncFailed
	r.mu.Unlock()
	if failed != nil {
		return &api.Error{Code: api.CodeAudit, Message: fmt.Sprintf("an fsync of the audit log failed earlier (%v): what reached the disk is unknown, so changes are refused until parryd restarts; nothing changed", failed)}
	}
	seq, err := r.log.AppendAll(evs...)
	if err != nil {
		r.logger.Error("audit append failed: the request fails and changes nothing", "event", events[0].name, "err", err)
		return &api.Error{Code: api.CodeAudit, Message: fmt.Sprintf("audit log not writable, nothing changed: %v", err)}
	}
	// The lines are durable before anyone is told ok. Staged lines (keys)
	// already are: their pending records are in the store's journal,
	// synced with the change, and Recover writes any that a crash kept
	// from the log. Lines not staged (a decision that changed nothing, a
	// dry run) are synced here. A failed fsync is final (pages it lost are
	// not written again by a later one that succeeds).
	if len(keys) > 0 {
		// durable through the store
	} else if err := r.log.SyncLines(); err != nil {
		r.mu.Lock()
		r.syncFailed = err
		r.mu.Unlock()
		r.logger.Error("audit fsync failed: the group fails, and changes are refused until parryd restarts", "err", err)
		return &api.Error{Code: api.CodeAudit, Message: fmt.Sprintf("audit log fsync failed, nothing changed; changes are refused until parryd restarts: %v", err)}
	}
	if len(keys) > 0 {
		r.mu.Lock()
		for _, k := range keys {
			r.written = append(r.written, writtenLine{key: k, seq: seq})
		}
		r.mu.Unlock()
	}
	for _, ev := range events {
		r.logAudit(ev.name, ev.fields)
	}
	return nil
}

// OnSync saves the anchor (the last durable line) and deletes the
// pending records whose lines it covers, in one transaction.
func (r *Record) OnSync(a audit.Anchor) {
	seq := a.Seq
	r.mu.Lock()
	var done []uint64
	kept := r.written[:0]
	for _, w := range r.written {
		if w.seq <= seq {
			done = append(done, w.key)
		} else {
			kept = append(kept, w)
		}
	}
	r.written = kept
	r.mu.Unlock()
	b, _ := json.Marshal(a)
	// On failure the records stay; at start they are found in the log and
	// not written twice.
	if err := r.store.Commit(store.Change{PutKV: map[string][]byte{KeyAuditAnchor: b}, DelPending: done}); err != nil {
		r.logger.Error("audit anchor: save", "seq", seq, "err", err)
	}
}

// Recover writes the audit lines of changes committed to the store
// whose lines never reached the audit log (see above). anchor is the
// last line known durable before this start (0: none); fresh is
// true when the log was started anew (chain break): nothing of the old one
// counts. A failure to write leaves the records for the maintenance loop
// to retry; status shows the audit failure meanwhile.
// path is the audit log's file.
func (r *Record) Recover(path string, anchor AuditAnchor, fresh bool) error {
	pend, err := r.store.Pending()
	if err != nil {
		return fmt.Errorf("audit recovery: %w", err)
	}
	r.next = 1
	if len(pend) == 0 {
		return nil
	}
	r.next = pend[len(pend)-1].Key + 1
	found := map[uint64]bool{}
	if !fresh {
		if found, err = findLines(path, anchor, pend); err != nil {
			return fmt.Errorf("audit recovery: %w", err)
		}
	}
	var lost []store.Pending
	var done []uint64
	for _, p := range pend {
		if found[p.Key] {
			done = append(done, p.Key)
		} else {
			lost = append(lost, p)
		}
	}
	if len(done) > 0 {
		if err := r.store.Commit(store.Change{DelPending: done}); err != nil {
			return fmt.Errorf("audit recovery: %w", err)
		}
	}
	r.mu.Lock()
	r.lost = lost
	r.mu.Unlock()
	r.RetryRecovery()
	return nil
}

// RetryRecovery writes the recovered lines still missing, if any.
func (r *Record) RetryRecovery() {
	r.mu.Lock()
	lost := r.lost
	r.mu.Unlock()
	if len(lost) == 0 {
		return
	}
	evs := make([]audit.Event, 0, len(lost))
	keys := make([]uint64, 0, len(lost))
	for _, p := range lost {
		var f map[string]json.RawMessage
		if err := json.Unmarshal(p.Fields, &f); err != nil || f == nil {
			f = map[string]json.RawMessage{"record": p.Fields}
		}
		f["recovered"] = json.RawMessage("true")
		f["decided_at"], _ = json.Marshal(p.Time.UTC().Format(time.RFC3339Nano))
		b, err := json.Marshal(f)
		if err != nil {
			continue // cannot happen: RawMessages from a valid record
		}
		evs = append(evs, audit.Event{Name: p.Event, Fields: audit.Raw(b)})
		keys = append(keys, p.Key)
	}
	if _, err := r.log.AppendAll(evs...); err != nil {
		r.logger.Error("audit recovery: cannot write the missing audit lines of committed changes; retrying", "count", len(evs), "err", err)
		return
	}
	err := r.log.Sync()
	if err == nil {
		err = r.store.Commit(store.Change{DelPending: keys})
	}
	if err != nil {
		// The lines are in the log; the records would be found there at
		// the next start.
		r.logger.Error("audit recovery: clear pending records", "err", err)
	}
	r.mu.Lock()
	r.lost = nil
	r.mu.Unlock()
	r.logger.Warn("audit recovery: wrote the audit lines of changes committed before a crash but never recorded", "count", len(evs))
}

// findLines reports which of pend have their audit line in the log at path
// after the anchored line (across segments, from the anchor's offset):
// the event and the exact fields bytes.
func findLines(path string, a AuditAnchor, pend []store.Pending) (map[uint64]bool, error) {
	anchor := a.Seq
	found := map[uint64]bool{}
	f, err := audit.OpenAfter(path, a)
	if errors.Is(err, os.ErrNotExist) {
		return found, nil
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	needles := make([][]byte, len(pend))
	for i, p := range pend {
		ev, _ := json.Marshal(p.Event)
		needles[i] = fmt.Appendf(nil, `,"event":%s,"fields":%s,"prev":"`, ev, p.Fields)
	}
	br := bufio.NewReaderSize(f, 256<<10)
	for {
		line, err := br.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) { // a line longer than the buffer
			rest, rerr := br.ReadBytes('\n')
			line, err = append(append([]byte(nil), line...), rest...), rerr
		}
		if len(line) > 0 && lineSeq(line) > anchor {
			for i, n := range needles {
				if !found[pend[i].Key] && bytes.Contains(line, n) {
					found[pend[i].Key] = true
				}
			}
		}
		if errors.Is(err, io.EOF) {
			return found, nil
		}
		if err != nil {
			return nil, err
		}
	}
}

// lineSeq is the seq of an audit line ({"seq":N,...}), 0 if none.
func lineSeq(line []byte) uint64 {
	rest, ok := bytes.CutPrefix(line, []byte(`{"seq":`))
	if !ok {
		return 0
	}
	i := bytes.IndexByte(rest, ',')
	if i < 0 {
		return 0
	}
	n, _ := strconv.ParseUint(string(rest[:i]), 10, 64)
	return n
}
