package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"path/filepath"
	"time"

	"github.com/parryhq/parry/agent/api"
	"github.com/parryhq/parry/agent/audit"
	"github.com/parryhq/parry/agent/control"
	"github.com/parryhq/parry/agent/enforce"
	"github.com/parryhq/parry/agent/store"
)

// Store key of an unacknowledged chain break (the audit anchor's is
// enforce.KeyAuditAnchor: the record saves it after each fsync).
const keyAuditBreak = "audit/chain_break"

// openAudit checks audit.log against the anchor in the store, moves a log
// that fails aside (never deleting it), opens the log and wires the anchor
// to be saved after each fsync. A missing anchor (first start, upgrade) is
// accepted.
//
// fresh reports that a break was found now: the log was started anew.
func openAudit(st *store.Store, dir string, acfg audit.Config, now func() time.Time, log *slog.Logger, onSync func(audit.Anchor),
	wrap func(audit.File) audit.File) (al *audit.Log, brk *api.ChainBreak, fresh bool, err error) {
	path := filepath.Join(dir, "audit.log")
	brk, err = checkAnchor(st, path, now)
	if err != nil {
		return nil, nil, false, err
	}
	al, err = audit.OpenConfig(path, acfg, now, wrap)
	if err != nil {
		return nil, nil, false, err
	}
	al.OnSync(onSync)
	if brk != nil {
		log.Error("audit chain broken across restart: the old log was kept and a new chain started",
			"anchor_seq", brk.AnchorSeq, "found", brk.Found, "kept_as", brk.KeptAs)
		err := al.Append("audit_chain_broken", brk)
		if err == nil {
			err = al.Sync()
		}
		if err != nil {
			al.Close()
			return nil, nil, false, fmt.Errorf("audit: record chain break: %w", err)
		}
		return al, brk, true, nil
	}
	if brk, err = loadBreak(st); err != nil {
		al.Close()
		return nil, nil, false, err
	}
	return al, brk, false, nil
}

// readAnchor reads the audit anchor from the store (zero when none).
func readAnchor(st *store.Store) (enforce.AuditAnchor, error) {
	var a enforce.AuditAnchor
	raw, err := st.Get(enforce.KeyAuditAnchor)
	if err != nil || raw == nil {
		return a, err
	}
	if err := json.Unmarshal(raw, &a); err != nil {
		return a, fmt.Errorf("audit anchor: bad record in store: %q", raw)
	}
	return a, nil
}

// checkAnchor verifies path against the stored anchor; on a mismatch it
// renames the file aside, saves the break marker and returns it.
func checkAnchor(st *store.Store, path string, now func() time.Time) (*api.ChainBreak, error) {
	raw, err := st.Get(enforce.KeyAuditAnchor)
	if err != nil {
		return nil, fmt.Errorf("audit anchor: %w", err)
	}
	var a enforce.AuditAnchor
	if raw == nil {
		return nil, nil
	}
	if err := json.Unmarshal(raw, &a); err != nil || a.Seq == 0 {
		return nil, fmt.Errorf("audit anchor: bad record in store: %q", raw)
	}
	res, err := audit.CheckAnchor(path, a)
	if err != nil {
		return nil, fmt.Errorf("audit anchor: check %s: %w", path, err)
	}
	if res.OK {
		return nil, nil
	}
	t := now().UTC()
	brk := &api.ChainBreak{Time: t, AnchorSeq: a.Seq, AnchorHash: a.Hash, Found: res.Reason, FoundAtLine: res.FirstBad,
		FoundLines: res.Lines, FoundLastSeq: res.LastSeq}
	kept, err := audit.KeepBroken(path, "broken-"+t.Format("20060102T150405.000Z"))
	if err != nil {
		return nil, fmt.Errorf("audit anchor: keep the broken log: %w", err)
	}
	brk.KeptAs = kept
	b, _ := json.Marshal(brk)
	if err := st.Put(keyAuditBreak, b); err != nil {
		return nil, fmt.Errorf("audit anchor: save break: %w", err)
	}
	return brk, nil
}

func loadBreak(st *store.Store) (*api.ChainBreak, error) {
	raw, err := st.Get(keyAuditBreak)
	if err != nil || raw == nil {
		return nil, err
	}
	var brk api.ChainBreak
	if err := json.Unmarshal(raw, &brk); err != nil {
		return nil, fmt.Errorf("audit: bad chain break record in store: %w", err)
	}
	return &brk, nil
}

// auditChainOK is parry_audit_chain_ok: the audit log is being written
// and no chain break waits for acknowledgement. Atomics only: a scrape
// never waits on the audit log or the daemon.
func (d *Daemon) auditChainOK() bool { return !d.breakOpen.Load() && !d.audit.Failing() }

// AuditBreak is the unacknowledged chain break, or nil.
func (d *Daemon) AuditBreak() *api.ChainBreak {
	d.breakMu.Lock()
	defer d.breakMu.Unlock()
	return d.chainBreak
}

func (d *Daemon) opAuditAck(_ context.Context, c *control.Call) (any, error) {
	brk := d.AuditBreak()
	if brk == nil {
		return map[string]any{"acknowledged": false}, nil
	}
	if err := d.store.Put(keyAuditBreak, nil); err != nil {
		return nil, api.Errorf(api.CodeInternal, "acknowledge: %v", err)
	}
	d.breakMu.Lock()
	d.chainBreak = nil
	d.breakOpen.Store(false)
	d.breakMu.Unlock()
	d.Audit("audit_break_acknowledged", map[string]any{"break_time": brk.Time, "kept_as": brk.KeptAs, "sender": c.Peer.String()})
	return map[string]any{"acknowledged": true, "chain_break": brk}, nil
}
