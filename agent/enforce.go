package agent

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/parryhq/parry/agent/store"
	"github.com/parryhq/parry/firewall"
	"github.com/parryhq/parry/response"
)

// Outcome is what Enforce did.
type Outcome struct {
	ID       string          `json:"decision_id"`         // the decision's ID
	Action   response.Action `json:"action"`              //
	Added    int             `json:"added,omitempty"`     // new blocks
	Updated  int             `json:"updated,omitempty"`   // existing blocks whose expiry changed
	Removed  int             `json:"removed,omitempty"`   // unblocked
	NotFound []string        `json:"not_found,omitempty"` // unblock: targets that were not blocked
	Refused  []*Error        `json:"refused,omitempty"`   // targets the guard refused (partial mode)
	Until    time.Time       `json:"until,omitzero"`      // block/lockdown: when it ends; zero = permanent
	DryRun   bool            `json:"dry_run,omitempty"`   // recorded, not enforced
	Applied  []netip.Prefix  `json:"-"`                   // the targets actually blocked or unblocked
	Err      error           `json:"-"`                   // for observers: why the decision was refused (nil: enforced)
}

// EnforceOptions tune one Enforce call.
type EnforceOptions struct {
	// Partial applies the acceptable targets of a block and reports the
	// refused ones in Outcome.Refused. Without it, any refusal refuses the
	// whole decision and nothing changes.
	Partial bool
}

// Enforce is the single path by which anything changes the kernel: the
// guard checks the targets, the store commits the decision (fsync), the
// firewall applies it, the audit log records it, and observers hear of it.
// When Enforce returns without error the decision is durable and in effect.
// Errors carry a protocol code (CodeOf); on error nothing changed.
func (d *Daemon) Enforce(ctx context.Context, dec response.Decision) (Outcome, error) {
	return d.EnforceWith(ctx, dec, EnforceOptions{})
}

// EnforceWith is Enforce with options.
func (d *Daemon) EnforceWith(ctx context.Context, dec response.Decision, opt EnforceOptions) (Outcome, error) {
	if err := ctx.Err(); err != nil {
		return Outcome{}, err
	}
	if dec.ID == "" {
		dec.ID = newID()
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	var out Outcome
	var err error
	switch {
	case dec.DryRun || dec.Action == response.ActionLog || dec.Action == response.ActionNotify:
		out = Outcome{ID: dec.ID, Action: dec.Action, DryRun: dec.DryRun, Until: dec.Until}
		d.Audit(string(dec.Action), decisionFields(dec, out))
	case dec.Action == response.ActionBlock:
		out, err = d.block(dec, opt)
	case dec.Action == response.ActionUnblock:
		out, err = d.unblock(dec)
	case dec.Action == response.ActionLockdown:
		out, err = d.startLockdown(dec)
	case dec.Action == response.ActionRelease:
		out, err = d.release(dec)
	default:
		err = errorf(CodeBadRequest, "unknown action %q", dec.Action)
	}
	if err != nil {
		out.Err = err
		f := decisionFields(dec, Outcome{ID: dec.ID, Action: dec.Action})
		f["code"], f["error"] = CodeOf(err), err.Error()
		d.Audit("refuse", f)
	}
	for _, o := range d.observers {
		o(dec, out)
	}
	return out, err
}

func newID() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// decisionFields are the audit fields of a decision and its outcome.
func decisionFields(dec response.Decision, out Outcome) map[string]any {
	f := map[string]any{"id": dec.ID, "action": string(dec.Action)}
	if len(dec.Targets) > 0 {
		f["targets"] = targetStrings(dec.Targets)
	}
	add := func(k, v string) {
		if v != "" {
			f[k] = v
		}
	}
	add("reason", dec.Reason)
	add("source", dec.Source)
	add("origin", dec.Origin)
	add("rule", dec.Rule)
	add("sender", dec.Sender)
	if !dec.Until.IsZero() {
		f["until"] = dec.Until.UTC().Format(time.RFC3339)
	} else if dec.Action == response.ActionBlock {
		f["until"] = "permanent"
	}
	if len(dec.Cause) > 0 {
		f["cause"] = dec.Cause
	}
	if dec.DryRun {
		f["dry_run"] = true
	}
	for k, v := range map[string]int{"added": out.Added, "updated": out.Updated, "removed": out.Removed} {
		if v != 0 {
			f[k] = v
		}
	}
	if len(out.NotFound) > 0 {
		f["not_found"] = out.NotFound
	}
	if len(out.Refused) > 0 {
		f["refused"] = out.Refused
	}
	return f
}

func targetStrings(ps []netip.Prefix) []string {
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = FormatTarget(p)
	}
	return s
}

// block enforces a block decision. Caller holds d.mu.
func (d *Daemon) block(dec response.Decision, opt EnforceOptions) (Outcome, error) {
	now := d.now()
	nowMs := now.UnixMilli()
	out := Outcome{ID: dec.ID, Action: dec.Action, Until: dec.Until}
	if len(dec.Targets) == 0 {
		return out, errorf(CodeBadRequest, "block: no targets")
	}
	if !dec.Until.IsZero() && !dec.Until.After(now) {
		return out, errorf(CodeInvalidDuration, "block: until %s is in the past", dec.Until.Format(time.RFC3339))
	}
	targets, refused := d.checkTargets(dec.Targets, nowMs)
	if len(refused) > 0 && (!opt.Partial || len(targets) == 0) {
		if len(refused) == 1 {
			return out, refused[0]
		}
		var parts []string
		for i, r := range refused {
			if i == 5 {
				parts = append(parts, fmt.Sprintf("and %d more", len(refused)-5))
				break
			}
			parts = append(parts, fmt.Sprintf("%s (%s)", r.Target, r.Code))
		}
		return out, errorf(CodeRefused, "%d of %d targets refused, nothing changed: %s; first: %s",
			len(refused), len(dec.Targets), strings.Join(parts, ", "), refused[0].Message)
	}
	out.Refused = refused
	seq := d.blocks.nextSeq()
	cause, _ := json.Marshal(dec.Cause)
	if len(dec.Cause) == 0 {
		cause = nil
	}
	dr := store.Decision{Seq: seq, ID: dec.ID, Time: now.UTC(), Reason: dec.Reason, Source: dec.Source,
		Origin: dec.Origin, Rule: dec.Rule, Sender: dec.Sender, Cause: cause}
	until := int64(0)
	if !dec.Until.IsZero() {
		until = dec.Until.UnixMilli()
	}
	ch := store.Change{PutDecisions: []store.Decision{dr}, PutBlocks: make([]store.Block, 0, len(targets))}
	undo := store.Change{DelDecisions: []uint64{seq}}
	elems := make([]firewall.Element, 0, len(targets))
	var timeout time.Duration
	if until != 0 {
		timeout = dec.Until.Sub(now)
	}
	for _, p := range targets {
		created := nowMs
		if old, ok := d.blocks.get(p); ok && !old.expired(nowMs) {
			created = old.created
			out.Updated++
			undo.PutBlocks = append(undo.PutBlocks, store.Block{Prefix: p, Created: old.created, Until: old.until, Decision: old.dec})
		} else {
			out.Added++
			undo.DelBlocks = append(undo.DelBlocks, p)
		}
		ch.PutBlocks = append(ch.PutBlocks, store.Block{Prefix: p, Created: created, Until: until, Decision: seq})
		elems = append(elems, firewall.Element{Prefix: p, Timeout: timeout})
	}
	// Decisions whose last block this one takes over are dropped with it.
	orphans := d.orphansAfterReplace(targets)
	ch.DelDecisions = orphans
	for _, o := range orphans {
		undo.PutDecisions = append(undo.PutDecisions, d.blocks.decision(o))
	}
	// The store commit (fsync) and the kernel update run in parallel; the
	// client hears ok only when both succeeded. If either fails, the other
	// is undone, so nothing changes.
	fwDone := make(chan error, 1)
	go func() { fwDone <- d.fw.Block(elems) }()
	stErr := d.store.Commit(ch)
	fwErr := <-fwDone
	if stErr != nil || fwErr != nil {
		d.blocks.lastSeq--
		return Outcome{ID: dec.ID, Action: dec.Action}, d.undoBlock(undo, now, stErr, fwErr)
	}
	d.blocks.addDecision(dr)
	for _, b := range ch.PutBlocks {
		d.blocks.put(b.Prefix, entry{created: b.Created, until: b.Until, dec: seq})
	}
	out.Applied = targets
	applied := dec
	applied.Targets = targets
	d.Audit("block", decisionFields(applied, out))
	if len(targets) >= bulkTargets {
		d.bulk.Store(true)
	}
	return out, nil
}

// undoBlock puts back whichever of store and kernel succeeded, and returns
// the error for the client.
func (d *Daemon) undoBlock(undo store.Change, now time.Time, stErr, fwErr error) error {
	if fwErr != nil {
		d.noteFirewallError(fwErr)
	}
	// The kernel may hold part of a multi-transaction batch even when Block
	// failed; put it back as the store has it.
	d.restoreKernel(undo, now)
	if stErr != nil {
		return &Error{Code: CodeStore, Message: stErr.Error()}
	}
	if uerr := d.store.Commit(undo); uerr != nil {
		d.log.Error("store undo after firewall failure failed; reconcile will re-assert", "err", uerr)
	}
	if errors.Is(fwErr, firewall.ErrOverlap) {
		return &Error{Code: CodeOverlap, Message: fwErr.Error()}
	}
	return &Error{Code: CodeFirewall, Message: fmt.Sprintf("firewall: %v", fwErr)}
}

// restoreKernel undoes a block in the kernel, best effort: removes what
// was added, re-asserts the previous expiry of what was updated.
func (d *Daemon) restoreKernel(undo store.Change, now time.Time) {
	if len(undo.DelBlocks) > 0 {
		if err := d.fw.Unblock(undo.DelBlocks); err != nil {
			d.log.Error("undo in the kernel failed; reconcile will correct it", "err", err)
		}
	}
	var back []firewall.Element
	for _, b := range undo.PutBlocks {
		var t time.Duration
		if b.Until != 0 {
			t = time.Duration(b.Until-now.UnixMilli()) * time.Millisecond
			if t <= 0 {
				continue
			}
		}
		back = append(back, firewall.Element{Prefix: b.Prefix, Timeout: t})
	}
	if len(back) > 0 {
		if err := d.fw.Block(back); err != nil {
			d.log.Error("undo in the kernel failed; reconcile will correct it", "err", err)
		}
	}
}

// orphansAfterReplace lists the decisions that will have no blocks once
// targets are re-pointed to a new decision.
func (d *Daemon) orphansAfterReplace(targets []netip.Prefix) []uint64 {
	lose := map[uint64]int{}
	for _, p := range targets {
		if old, ok := d.blocks.get(p); ok {
			lose[old.dec]++
		}
	}
	var out []uint64
	for seq, n := range lose {
		if m := d.blocks.decs[seq]; m == nil || m.refs <= n {
			out = append(out, seq)
		}
	}
	return out
}

// checkTargets runs the guard and the overlap check; duplicates collapse.
func (d *Daemon) checkTargets(in []netip.Prefix, nowMs int64) ([]netip.Prefix, []*Error) {
	ok := make([]netip.Prefix, 0, len(in))
	var refused []*Error
	seen := make(map[netip.Prefix]struct{}, len(in))
	cidrs := false
	for _, p := range in {
		if _, dup := seen[p]; dup {
			continue
		}
		seen[p] = struct{}{}
		if e := d.guard.Check(p); e != nil {
			e.Target = FormatTarget(p)
			refused = append(refused, e)
			continue
		}
		if q, hit := d.blocks.overlapping(p, nowMs); hit {
			refused = append(refused, &Error{Code: CodeOverlap, Target: FormatTarget(p),
				Message: fmt.Sprintf("%s overlaps the existing block %s; unblock it first or block the same prefix", FormatTarget(p), FormatTarget(q))})
			continue
		}
		cidrs = cidrs || !p.IsSingleIP()
		ok = append(ok, p)
	}
	if !cidrs { // distinct single addresses cannot overlap each other
		return ok, refused
	}
	batch := newIndex()
	kept := ok[:0]
	for _, p := range ok {
		if q, hit := batch.overlapping(p, 0); hit {
			refused = append(refused, &Error{Code: CodeOverlap, Target: FormatTarget(p),
				Message: fmt.Sprintf("%s overlaps %s in the same request", FormatTarget(p), FormatTarget(q))})
			continue
		}
		batch.put(p, entry{})
		kept = append(kept, p)
	}
	return kept, refused
}

// unblock enforces an unblock decision. Caller holds d.mu.
func (d *Daemon) unblock(dec response.Decision) (Outcome, error) {
	nowMs := d.now().UnixMilli()
	out := Outcome{ID: dec.ID, Action: dec.Action}
	if len(dec.Targets) == 0 {
		return out, errorf(CodeBadRequest, "unblock: no targets")
	}
	var ch, undo store.Change
	var present []netip.Prefix
	seen := map[netip.Prefix]bool{}
	for _, p := range dec.Targets {
		if seen[p] {
			continue
		}
		seen[p] = true
		old, ok := d.blocks.get(p)
		if !ok || old.expired(nowMs) {
			out.NotFound = append(out.NotFound, FormatTarget(p))
			continue
		}
		present = append(present, p)
		ch.DelBlocks = append(ch.DelBlocks, p)
		undo.PutBlocks = append(undo.PutBlocks, store.Block{Prefix: p, Created: old.created, Until: old.until, Decision: old.dec})
	}
	if len(present) > 0 {
		lose := map[uint64]int{}
		for _, p := range present {
			e, _ := d.blocks.get(p)
			lose[e.dec]++
		}
		for seq, n := range lose {
			if m := d.blocks.decs[seq]; m == nil || m.refs <= n {
				ch.DelDecisions = append(ch.DelDecisions, seq)
				undo.PutDecisions = append(undo.PutDecisions, d.blocks.decision(seq))
			}
		}
		if err := d.store.Commit(ch); err != nil {
			return Outcome{ID: dec.ID, Action: dec.Action}, &Error{Code: CodeStore, Message: err.Error()}
		}
		if err := d.fw.Unblock(present); err != nil {
			if uerr := d.store.Commit(undo); uerr != nil {
				d.log.Error("store undo after firewall failure failed", "err", uerr)
			}
			d.noteFirewallError(err)
			return Outcome{ID: dec.ID, Action: dec.Action}, &Error{Code: CodeFirewall, Message: fmt.Sprintf("firewall: %v", err)}
		}
		for _, p := range present {
			d.blocks.del(p)
		}
	}
	out.Removed, out.Applied = len(present), present
	d.Audit("unblock", decisionFields(dec, out))
	return out, nil
}

func (d *Daemon) noteFirewallError(err error) {
	d.health.LastError = err.Error()
	select { // let the healer check the table
	case d.heal <- struct{}{}:
	default:
	}
}
