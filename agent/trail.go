package agent

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

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

// auditTrail holds the pending records in flight. It has its own lock: the
// fsync callback runs outside d.mu.
type auditTrail struct {
	mu      sync.Mutex
	next    uint64        // key of the next pending record
	written []writtenLine // written, waiting for the fsync that makes them durable
	// lost are records found at start without their audit line, whose
	// recovery failed (the audit log was not writable); retried by the
	// maintenance loop.
	lost []store.Pending
}

type writtenLine struct{ key, seq uint64 }

// stageAudit encodes events as pending records added to ch (and their
// deletion to undo); it returns the events ready for the log and the keys.
// Caller holds d.mu.
func (d *Daemon) stageAudit(ch, undo *store.Change, events []auditEvent) ([]audit.Event, []uint64, error) {
	evs := make([]audit.Event, len(events))
	keys := make([]uint64, len(events))
	now := d.now().UTC()
	t := &d.trail
	t.mu.Lock()
	defer t.mu.Unlock()
	for i, ev := range events {
		b, err := json.Marshal(ev.fields)
		if err != nil {
			return nil, nil, errorf(CodeInternal, "audit %s: encode: %v", ev.name, err)
		}
		keys[i] = t.next
		t.next++
		evs[i] = audit.Event{Name: ev.name, Fields: audit.Raw(b)}
		ch.PutPending = append(ch.PutPending, store.Pending{Key: keys[i], Event: ev.name, Time: now, Fields: b})
		undo.DelPending = append(undo.DelPending, keys[i])
	}
	return evs, keys, nil
}

// writeAudit appends the staged lines of a committed change with one
// write. An error is a CodeAudit *Error: the caller undoes the change.
func (d *Daemon) writeAudit(events []auditEvent, evs []audit.Event, keys []uint64) error {
	if evs == nil { // not staged: nothing in the store to recover
		evs = make([]audit.Event, len(events))
		for i, ev := range events {
			evs[i] = audit.Event{Name: ev.name, Fields: ev.fields}
		}
	}
	seq, err := d.audit.AppendAll(evs...)
	if err != nil {
		d.log.Error("audit append failed: the request fails and changes nothing", "event", events[0].name, "err", err)
		return &Error{Code: CodeAudit, Message: fmt.Sprintf("audit log not writable, nothing changed: %v", err)}
	}
	if len(keys) > 0 {
		d.trail.mu.Lock()
		for _, k := range keys {
			d.trail.written = append(d.trail.written, writtenLine{key: k, seq: seq})
		}
		d.trail.mu.Unlock()
	}
	for _, ev := range events {
		d.logAudit(ev.name, ev.fields)
	}
	return nil
}

// onAuditSync saves the anchor (the last durable line) and deletes the
// pending records whose lines it covers, in one transaction.
func (d *Daemon) onAuditSync(a audit.Anchor) {
	seq := a.Seq
	t := &d.trail
	t.mu.Lock()
	var done []uint64
	kept := t.written[:0]
	for _, w := range t.written {
		if w.seq <= seq {
			done = append(done, w.key)
		} else {
			kept = append(kept, w)
		}
	}
	t.written = kept
	t.mu.Unlock()
	b, _ := json.Marshal(a)
	// On failure the records stay; at start they are found in the log and
	// not written twice.
	if err := d.store.Commit(store.Change{PutKV: map[string][]byte{keyAuditAnchor: b}, DelPending: done}); err != nil {
		d.log.Error("audit anchor: save", "seq", seq, "err", err)
	}
}

// recoverAudit writes the audit lines of changes committed to the store
// whose lines never reached the audit log (see above). anchor is the seq
// of the last line known durable before this start (0: none); fresh is
// true when the log was started anew (chain break): nothing of the old one
// counts. A failure to write leaves the records for the maintenance loop
// to retry; status shows the audit failure meanwhile.
func (d *Daemon) recoverAudit(anchor auditAnchor, fresh bool) error {
	pend, err := d.store.Pending()
	if err != nil {
		return fmt.Errorf("audit recovery: %w", err)
	}
	d.trail.next = 1
	if len(pend) == 0 {
		return nil
	}
	d.trail.next = pend[len(pend)-1].Key + 1
	found := map[uint64]bool{}
	if !fresh {
		if found, err = findLines(filepath.Join(d.cfg.StateDir, "audit.log"), anchor, pend); err != nil {
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
		if err := d.store.Commit(store.Change{DelPending: done}); err != nil {
			return fmt.Errorf("audit recovery: %w", err)
		}
	}
	d.trail.lost = lost
	d.retryRecovery()
	return nil
}

// retryRecovery writes the recovered lines still missing, if any.
func (d *Daemon) retryRecovery() {
	t := &d.trail
	t.mu.Lock()
	lost := t.lost
	t.mu.Unlock()
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
	if _, err := d.audit.AppendAll(evs...); err != nil {
		d.log.Error("audit recovery: cannot write the missing audit lines of committed changes; retrying", "count", len(evs), "err", err)
		return
	}
	err := d.audit.Sync()
	if err == nil {
		err = d.store.Commit(store.Change{DelPending: keys})
	}
	if err != nil {
		// The lines are in the log; the records would be found there at
		// the next start.
		d.log.Error("audit recovery: clear pending records", "err", err)
	}
	t.mu.Lock()
	t.lost = nil
	t.mu.Unlock()
	d.log.Warn("audit recovery: wrote the audit lines of changes committed before a crash but never recorded", "count", len(evs))
}

// findLines reports which of pend have their audit line in the log at path
// after the anchored line (across segments, from the anchor's offset):
// the event and the exact fields bytes.
func findLines(path string, a auditAnchor, pend []store.Pending) (map[uint64]bool, error) {
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
