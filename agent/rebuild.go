package agent

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/parryhq/parry/agent/api"
	"github.com/parryhq/parry/agent/audit"
	"github.com/parryhq/parry/agent/enforce"
	"github.com/parryhq/parry/agent/store"
	"github.com/parryhq/parry/firewall"
)

// ErrStoreHealthy refuses --rebuild-store on a store that opens cleanly.
var ErrStoreHealthy = errors.New("the store is not corrupt")

// maxAuditLine bounds one audit line read during a rebuild (a block of
// 100,000 targets is about 2 MiB); longer lines are skipped and counted.
const maxAuditLine = 64 << 20

// RebuildReport is what a store rebuild recovered.
type RebuildReport struct {
	Blocks      int    // kernel elements now in the store
	Matched     int    // of them, with their decision from the audit log
	Unmatched   int    // with a "recovered" decision (no audit record found)
	Lockdown    bool   // a lockdown in the kernel was recovered
	AuditLines  int    // audit lines read
	AuditFaults int    // lines that did not decode or were too long (skipped)
	KeptAs      string // the corrupt file, renamed; empty: there was none
}

// auditDecision is one block or lockdown line of the audit log.
type auditDecision struct {
	time time.Time
	dec  store.Decision
}

// auditLine is the part of an audit line a rebuild reads.
type auditLine struct {
	Time   time.Time `json:"time"`
	Event  string    `json:"event"`
	Fields struct {
		ID      string          `json:"id"`
		Targets []string        `json:"targets"`
		Reason  string          `json:"reason"`
		Source  string          `json:"source"`
		Origin  string          `json:"origin"`
		Rule    string          `json:"rule"`
		Sender  string          `json:"sender"`
		Cause   json.RawMessage `json:"cause"`
		DryRun  bool            `json:"dry_run"`
		Refused []struct {
			Target string `json:"target"`
		} `json:"refused"`
	} `json:"fields"`
}

// auditHistory replays audit.log: for every target, the last block line
// that applied to it and was not undone by a later unblock or expiry; and
// the last lockdown not followed by a release. A missing log is empty
// history; a line that does not decode is skipped and counted.
func auditHistory(path string) (map[netip.Prefix]*auditDecision, *auditDecision, int, int, error) {
	last := map[netip.Prefix]*auditDecision{}
	var lock *auditDecision
	f, err := audit.OpenAll(path)
	if errors.Is(err, os.ErrNotExist) {
		return last, nil, 0, 0, nil
	}
	if err != nil {
		return nil, nil, 0, 0, fmt.Errorf("audit log: %w", err)
	}
	defer f.Close()
	r := bufio.NewReaderSize(f, 1<<20)
	lines, faults := 0, 0
	var buf []byte
	for {
		chunk, err := r.ReadSlice('\n')
		if len(buf)+len(chunk) <= maxAuditLine {
			buf = append(buf, chunk...)
		} else {
			buf = buf[:maxAuditLine+1] // remember it was too long
		}
		if errors.Is(err, bufio.ErrBufferFull) {
			continue
		}
		if len(buf) > 0 {
			lines++
			if len(buf) > maxAuditLine || replay(buf, last, &lock) != nil {
				faults++
			}
		}
		buf = buf[:0]
		if errors.Is(err, io.EOF) {
			return last, lock, lines, faults, nil
		}
		if err != nil {
			return nil, nil, lines, faults, fmt.Errorf("audit log: %w", err)
		}
	}
}

func replay(b []byte, last map[netip.Prefix]*auditDecision, lock **auditDecision) error {
	var l auditLine
	if err := json.Unmarshal(b, &l); err != nil {
		return err
	}
	if l.Fields.DryRun {
		return nil
	}
	targets := func(skip map[string]bool) []netip.Prefix {
		var out []netip.Prefix
		for _, t := range l.Fields.Targets {
			if skip[t] {
				continue
			}
			if p, err := api.ParseTarget(t); err == nil {
				out = append(out, p)
			}
		}
		return out
	}
	dec := func() *auditDecision {
		return &auditDecision{time: l.Time, dec: store.Decision{ID: l.Fields.ID, Time: l.Time, Reason: l.Fields.Reason,
			Source: l.Fields.Source, Origin: l.Fields.Origin, Rule: l.Fields.Rule, Sender: l.Fields.Sender, Cause: l.Fields.Cause}}
	}
	switch l.Event {
	case "block":
		refused := map[string]bool{}
		for _, r := range l.Fields.Refused {
			refused[r.Target] = true
		}
		d := dec()
		for _, p := range targets(refused) {
			last[p] = d
		}
	case "unblock", "expire":
		for _, p := range targets(nil) {
			delete(last, p)
		}
	case "lockdown":
		*lock = dec()
	case "release":
		*lock = nil
	}
	return nil
}

// rebuildChange builds the store content from the kernel's elements (their
// remaining timeouts) and the audit history (their decisions), as of now.
func rebuildChange(els []firewall.Element, kl *firewall.Lockdown, hist map[netip.Prefix]*auditDecision, lock *auditDecision, now time.Time) (store.Change, RebuildReport) {
	var ch store.Change
	var rep RebuildReport
	seqs := map[*auditDecision]uint64{}
	var recovered uint64 // seq of the shared "no audit record" decision
	nextSeq := uint64(0)
	for _, e := range els {
		b := store.Block{Prefix: e.Prefix, Created: now.UnixMilli()}
		if e.Timeout > 0 {
			b.Until = now.Add(e.Timeout).UnixMilli()
		}
		if ad := hist[e.Prefix]; ad != nil {
			seq, ok := seqs[ad]
			if !ok {
				nextSeq++
				seq = nextSeq
				seqs[ad] = seq
				d := ad.dec
				d.Seq = seq
				ch.PutDecisions = append(ch.PutDecisions, d)
			}
			b.Decision, b.Created = seq, ad.time.UnixMilli()
			rep.Matched++
		} else {
			if recovered == 0 {
				nextSeq++
				recovered = nextSeq
				ch.PutDecisions = append(ch.PutDecisions, store.Decision{Seq: recovered, ID: enforce.NewID(), Time: now,
					Reason: "recovered from the kernel by parryd --rebuild-store; no audit record matched", Source: "rebuild"})
			}
			b.Decision = recovered
			rep.Unmatched++
		}
		ch.PutBlocks = append(ch.PutBlocks, b)
	}
	rep.Blocks = len(ch.PutBlocks)
	if kl != nil && kl.Timeout > 0 {
		l := &store.Lockdown{ID: enforce.NewID(), Since: now, Until: now.Add(kl.Timeout), Allow: kl.Allow, Isolate: kl.Isolate,
			Reason: "recovered from the kernel by parryd --rebuild-store", Source: "rebuild"}
		if lock != nil {
			l.ID, l.Since, l.Reason, l.Source, l.Sender = lock.dec.ID, lock.time, lock.dec.Reason, lock.dec.Source, lock.dec.Sender
		}
		ch.SetLockdown = l
		rep.Lockdown = true
	}
	return ch, rep
}

// rebuildStore is parryd --rebuild-store: it refuses a store that opens
// cleanly, reads the kernel's table and the audit log, moves the corrupt
// store aside, writes a new one and records the rebuild in the audit log.
// parryd must not be running (the store's lock says so).
func (m *Main) rebuildStore(cfg Config) (RebuildReport, error) {
	var rep RebuildReport
	path := filepath.Join(cfg.StateDir, "store.db")
	switch s, err := store.Open(path); {
	case err == nil:
		s.Close()
		return rep, fmt.Errorf("rebuild store %s: %w (it opens cleanly); nothing changed", path, ErrStoreHealthy)
	case !errors.Is(err, store.ErrCorrupt):
		return rep, fmt.Errorf("rebuild store: %w", err)
	}
	fw, err := m.openFirewall(cfg)
	if err != nil {
		return rep, fmt.Errorf("rebuild store: %w", err)
	}
	els, err := fw.Elements()
	if errors.Is(err, firewall.ErrNotEnsured) {
		els, err = nil, nil // no table: nothing is blocked
	}
	if err != nil {
		return rep, fmt.Errorf("rebuild store: read the kernel's blocks: %w", err)
	}
	var kl *firewall.Lockdown
	switch l, on, err := fw.LockdownState(); {
	case err == nil && on:
		kl = &l
	case err != nil && !errors.Is(err, firewall.ErrNotEnsured):
		return rep, fmt.Errorf("rebuild store: read the kernel's lockdown: %w", err)
	}
	auditPath := filepath.Join(cfg.StateDir, "audit.log")
	hist, lock, lines, faults, err := auditHistory(auditPath)
	if err != nil {
		return rep, fmt.Errorf("rebuild store: %w", err)
	}
	now := time.Now()
	ch, rep := rebuildChange(els, kl, hist, lock, now)
	rep.AuditLines, rep.AuditFaults = lines, faults
	kept := path + ".corrupt-" + now.UTC().Format("20060102T150405Z")
	if err := os.Rename(path, kept); err != nil {
		return rep, fmt.Errorf("rebuild store: move the corrupt store aside: %w", err)
	}
	rep.KeptAs = kept
	// The corrupt store's write-ahead journal goes with it: replayed onto
	// the rebuilt store, it would bring back what the kernel no longer has.
	wal, err := filepath.Glob(path + ".wal.*")
	if err != nil {
		return rep, fmt.Errorf("rebuild store: %w", err)
	}
	for _, w := range wal {
		if err := os.Rename(w, kept+strings.TrimPrefix(w, path)); err != nil {
			return rep, fmt.Errorf("rebuild store: move the corrupt store's journal aside: %w", err)
		}
	}
	st, err := store.Open(path)
	if err != nil {
		return rep, fmt.Errorf("rebuild store: new store: %w", err)
	}
	if err := st.Commit(ch); err != nil {
		st.Close()
		return rep, fmt.Errorf("rebuild store: %w", err)
	}
	if err := st.Close(); err != nil {
		return rep, fmt.Errorf("rebuild store: %w", err)
	}
	al, err := audit.OpenConfig(auditPath, cfg.Audit, time.Now, nil)
	if err == nil {
		err = al.Append("store_rebuilt", map[string]any{"blocks": rep.Blocks, "matched": rep.Matched, "unmatched": rep.Unmatched,
			"lockdown": rep.Lockdown, "kept_as": filepath.Base(kept), "audit_lines": lines, "audit_faults": faults})
		if err == nil {
			err = al.Sync()
		}
		if cerr := al.Close(); err == nil {
			err = cerr
		}
	}
	if err != nil {
		return rep, fmt.Errorf("rebuild store: the store is rebuilt, but recording it in the audit log failed: %w", err)
	}
	return rep, nil
}

// String is the rebuild's summary for the admin.
func (r RebuildReport) String() string {
	lock := "no lockdown in the kernel"
	if r.Lockdown {
		lock = "the kernel's lockdown recovered"
	}
	s := fmt.Sprintf("store rebuilt: %d blocks from the kernel with their remaining timeouts (%d with their decision from the audit log, %d without a matching audit record); %s.\n",
		r.Blocks, r.Matched, r.Unmatched, lock)
	s += fmt.Sprintf("read %d audit lines", r.AuditLines)
	if r.AuditFaults > 0 {
		s += fmt.Sprintf(" (%d skipped: not decodable)", r.AuditFaults)
	}
	s += fmt.Sprintf("; the corrupt store is kept as %s.\nStart parry again (systemctl start parry).", r.KeptAs)
	return s
}
