package enforce

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/parryhq/parry/agent/api"
	"github.com/parryhq/parry/agent/store"
	"github.com/parryhq/parry/response"
)

// Outcome is what Enforce did.
type Outcome struct {
	ID       string          `json:"decision_id"`         // the decision's ID
	Action   response.Action `json:"action"`              //
	Added    int             `json:"added,omitempty"`     // new blocks
	Updated  int             `json:"updated,omitempty"`   // existing blocks whose expiry changed
	Removed  int             `json:"removed,omitempty"`   // unblocked
	Kept     []string        `json:"kept,omitempty"`      // targets left as they were: blocked at least as long, or an admin's block (docs/policy.md)
	NotFound []string        `json:"not_found,omitempty"` // unblock: targets that were not blocked
	Refused  []*api.Error    `json:"refused,omitempty"`   // targets the guard refused (partial mode)
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
	// SenderCap counts the targets a block blocks or lengthens against
	// response.sender_block_cap, and refuses the block (sender_block_cap)
	// when the cap is reached: for decisions caused by a non-admin sender's
	// signal (blockcap.go). Such a refusal is not audited one by one.
	SenderCap bool
	// Lift limits an unblock to what one requester's own request caused:
	// a target is lifted only if its block in force was created by a
	// decision with Lift's Source and Sender (not one that lengthened a
	// block another cause made); the others are kept (Outcome.Kept).
	// fail2ban's unban (signal unban_requested) lifts with it.
	Lift *Requester
}

// Requester names who asked for a decision: its Source and Sender.
type Requester struct {
	Source, Sender string
}

// Enforce is the single path by which anything changes the kernel: the
// guard checks the targets, the store commits the decision (fsync), the
// firewall applies it, the audit log records it, and observers hear of it.
// When Enforce returns without error the decision is durable and in effect.
// Errors carry a protocol code (api.CodeOf); on error nothing changed. It
// waits for another change at most Options.LockWait (then api.CodeBusy),
// or until ctx ends.
func (dp *Path) Enforce(ctx context.Context, dec response.Decision) (Outcome, error) {
	return dp.EnforceWith(ctx, dec, EnforceOptions{})
}

// EnforceWith is Enforce with options.
func (dp *Path) EnforceWith(ctx context.Context, dec response.Decision, opt EnforceOptions) (Outcome, error) {
	if err := ctx.Err(); err != nil {
		return Outcome{}, err
	}
	if dec.ID == "" {
		dec.ID = NewID()
	}
	out := dp.enqueue(ctx, dec, opt) // group.go
	if out.Err != nil {
		return Outcome{ID: dec.ID, Action: dec.Action}, out.Err
	}
	return out, nil
}

// enforceLocked enforces one decision, records a refusal and tells the
// observers. Caller holds dp.mu.
func (dp *Path) enforceLocked(dec response.Decision, opt EnforceOptions) Outcome {
	var out Outcome
	var err error
	switch {
	case dec.DryRun || dec.Action == response.ActionLog || dec.Action == response.ActionNotify:
		out = Outcome{ID: dec.ID, Action: dec.Action, DryRun: dec.DryRun, Until: dec.Until}
		err = dp.rec.write([]auditEvent{{string(dec.Action), decisionFields(dec, out)}}, nil, nil)
	case dec.Action == response.ActionBlock:
		out, err = dp.block(dec, opt)
	case dec.Action == response.ActionUnblock:
		out, err = dp.unblock(dec, opt.Lift)
	case dec.Action == response.ActionLockdown:
		out, err = dp.lock.start(dec)
	case dec.Action == response.ActionRelease:
		out, err = dp.lock.release(dec)
	default:
		err = api.Errorf(api.CodeBadRequest, "unknown action %q", dec.Action)
	}
	out.Err = err
	dp.finish(dec, out)
	return out
}

// finish audits a refusal (out.Err set; the success was audited by the
// action) and tells the observers. Caller holds dp.mu.
func (dp *Path) finish(dec response.Decision, out Outcome) {
	if out.Err != nil && api.CodeOf(out.Err) != CodeSenderBlockCap { // the cap audits once per window
		f := decisionFields(dec, Outcome{ID: dec.ID, Action: dec.Action})
		f["code"], f["error"] = api.CodeOf(out.Err), out.Err.Error()
		dp.rec.Audit("refuse", f)
	}
	if len(dp.observers) == 0 {
		return
	}
	st := dp.state()
	for _, o := range dp.observers {
		o(dec, out, st)
	}
}

// NewID returns a new random decision ID.
func NewID() string {
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
	if len(out.Kept) > 0 {
		f["kept"] = out.Kept
	}
	if dec.Admin {
		f["admin"] = true
	}
	if len(out.Refused) > 0 {
		f["refused"] = out.Refused
	}
	return f
}

func targetStrings(ps []netip.Prefix) []string {
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = api.FormatTarget(p)
	}
	return s
}

// block enforces a block decision. Caller holds dp.mu.
func (dp *Path) block(dec response.Decision, opt EnforceOptions) (Outcome, error) {
	pl := newBlockPlan(dp.now(), dp.blocks)
	out, targets, err := checkBlock(&dp.guard, dec, opt, pl.now)
	if err != nil {
		return out, err
	}
	if opt.SenderCap && dp.blocks.changes(dec, targets, pl.now.UnixMilli()) {
		if err := dp.blockCap.admit(dec, pl.now); err != nil {
			return Outcome{ID: dec.ID, Action: dec.Action}, err
		}
	}
	changed := pl.add(dp.blocks, dec, targets, &out)
	applied := dec
	applied.Targets = changed
	pl.audit = append(pl.audit, auditEvent{"block", decisionFields(applied, out)})
	if err := dp.commitBlocks(pl); err != nil {
		return Outcome{ID: dec.ID, Action: dec.Action}, err
	}
	if opt.SenderCap {
		dp.blockCap.blocks += len(changed)
	}
	out.Applied = changed
	return out, nil
}

// checkBlock validates a block decision and runs the guard: it returns the
// targets to apply, or the refusal.
func checkBlock(g *Guard, dec response.Decision, opt EnforceOptions, now time.Time) (Outcome, []netip.Prefix, error) {
	out := Outcome{ID: dec.ID, Action: dec.Action, Until: dec.Until}
	if len(dec.Targets) == 0 {
		return out, nil, api.Errorf(api.CodeBadRequest, "block: no targets")
	}
	if !dec.Until.IsZero() && !dec.Until.After(now) {
		return out, nil, api.Errorf(api.CodeInvalidDuration, "block: until %s is in the past", dec.Until.Format(time.RFC3339))
	}
	targets, refused := checkTargets(g, dec.Targets)
	if len(refused) > 0 && (!opt.Partial || len(targets) == 0) {
		return out, nil, refusal(refused, len(dec.Targets))
	}
	out.Refused = refused
	return out, targets, nil
}

// refusal is the error of a decision whose targets were refused.
func refusal(refused []*api.Error, total int) error {
	if len(refused) == 1 {
		return refused[0]
	}
	var parts []string
	for i, r := range refused {
		if i == 5 {
			parts = append(parts, fmt.Sprintf("and %d more", len(refused)-5))
			break
		}
		parts = append(parts, fmt.Sprintf("%s (%s)", r.Target, r.Code))
	}
	return api.Errorf(api.CodeRefused, "%d of %d targets refused, nothing changed: %s; first: %s",
		len(refused), total, strings.Join(parts, ", "), refused[0].Message)
}

// blockPlan gathers the store change, its undo and the kernel elements of
// one or more block decisions, which commitBlocks applies together.
type blockPlan struct {
	now      time.Time
	ch, undo store.Change
	fw, back kdiff          // the kernel diff of ch and of undo (kernelDiff, set by commit)
	targets  []netip.Prefix // targets taken over by the plan's decisions, distinct (orphan check)
	lastSeq  uint64         // dp.blocks.lastSeq before the plan
	audit    []auditEvent   // the audit lines of the plan's decisions
}

func newBlockPlan(now time.Time, x *index) *blockPlan {
	return &blockPlan{now: now, lastSeq: x.lastSeq}
}

// add adds one checked block decision to pl and counts its added,
// updated and kept targets in out; it returns the targets it changes.
// targets must not be in pl already. Caller holds dp.mu.
//
// Precedence (docs/policy.md): an admin's explicit block replaces any
// block, shorter or longer. Any other decision (policy, fleet...) may only
// lengthen a block: a target already blocked at least as long is kept as it
// is (expiry, reason and cause), and an admin's block that it lengthens
// stays the admin's (only its expiry moves), so that only an admin can lift
// it.
func (pl *blockPlan) add(x *index, dec response.Decision, targets []netip.Prefix, out *Outcome) []netip.Prefix {
	nowMs := pl.now.UnixMilli()
	var seq uint64 // the decision's record, written if a target points to it
	until := int64(0)
	if !dec.Until.IsZero() {
		until = dec.Until.UnixMilli()
	}
	changed := make([]netip.Prefix, 0, len(targets))
	for _, p := range targets {
		created, owner := nowMs, uint64(0)
		if old, ok := x.get(p); ok && !old.expired(nowMs) {
			if !dec.Admin && !outlasts(until, old.until) {
				out.Kept = append(out.Kept, api.FormatTarget(p))
				continue
			}
			if !dec.Admin && x.decision(old.dec).Admin {
				owner = old.dec
			}
			created = old.created
			out.Updated++
			pl.undo.PutBlocks = append(pl.undo.PutBlocks, store.Block{Prefix: p, Created: old.created, Until: old.until, Decision: old.dec})
		} else {
			out.Added++
			pl.undo.DelBlocks = append(pl.undo.DelBlocks, p)
		}
		if owner == 0 {
			if seq == 0 {
				seq = pl.decision(x, dec)
			}
			owner = seq
			pl.targets = append(pl.targets, p)
		}
		pl.ch.PutBlocks = append(pl.ch.PutBlocks, store.Block{Prefix: p, Created: created, Until: until, Decision: owner})
		changed = append(changed, p)
	}
	return changed
}

// outlasts reports whether a block until a (unix ms, 0 permanent) ends
// later than one until b.
func outlasts(a, b int64) bool {
	switch {
	case b == 0:
		return false
	case a == 0:
		return true
	}
	return a > b
}

// decision adds dec's store record to pl and returns its seq.
func (pl *blockPlan) decision(x *index, dec response.Decision) uint64 {
	seq := x.nextSeq()
	cause, _ := json.Marshal(dec.Cause)
	if len(dec.Cause) == 0 {
		cause = nil
	}
	pl.ch.PutDecisions = append(pl.ch.PutDecisions, store.Decision{Seq: seq, ID: dec.ID, Time: pl.now.UTC(),
		Reason: dec.Reason, Source: dec.Source, Origin: dec.Origin, Rule: dec.Rule, Sender: dec.Sender, Cause: cause, Admin: dec.Admin})
	pl.undo.DelDecisions = append(pl.undo.DelDecisions, seq)
	return seq
}

// commitBlocks applies a plan: one store commit (fsync, with the pending
// audit records) and one kernel update, run in parallel, then the audit
// lines. If any of the three fails, the others are undone, so nothing
// changes, and the error is returned. Caller holds dp.mu.
func (dp *Path) commitBlocks(pl *blockPlan) error {
	if len(pl.ch.PutBlocks) == 0 { // nothing to change (every target kept): only the audit lines
		if len(pl.audit) == 0 {
			return nil
		}
		return dp.rec.write(pl.audit, nil, nil)
	}
	// Decisions whose last block this plan takes over are dropped with it.
	if err := dp.commitPlan(pl, pl.targets); err != nil {
		return err
	}
	for _, b := range pl.ch.PutBlocks {
		dp.blocks.put(b.Prefix, entry{created: b.Created, until: b.Until, dec: b.Decision})
	}
	dp.blocks.settle()
	if pl.fw.size() >= BulkTargets {
		dp.bulk()
	}
	return nil
}

// undoBlock puts back whichever of store and kernel succeeded, and returns
// the error for the client.
func (dp *Path) undoBlock(undo store.Change, back kdiff, stErr, fwErr error) error {
	if fwErr != nil {
		dp.kernelError(fwErr)
	}
	// The kernel may hold part of a multi-transaction batch even when Apply
	// failed; put it back as the store has it.
	dp.restoreKernel(back)
	if stErr != nil {
		return &api.Error{Code: api.CodeStore, Message: stErr.Error()}
	}
	if uerr := dp.store.Commit(undo); uerr != nil {
		dp.log.Error("store undo after firewall failure failed; reconcile will re-assert", "err", uerr)
	}
	return &api.Error{Code: api.CodeFirewall, Message: fmt.Sprintf("firewall: %v", fwErr)}
}

// checkTargets runs the guard; duplicates collapse. Targets may overlap
// one another and the blocks in force: each is its own record, and the
// kernel gets their union (kunion.go).
func checkTargets(g *Guard, in []netip.Prefix) ([]netip.Prefix, []*api.Error) {
	ok := make([]netip.Prefix, 0, len(in))
	var refused []*api.Error
	seen := make(map[netip.Prefix]struct{}, len(in))
	for _, p := range in {
		if _, dup := seen[p]; dup {
			continue
		}
		seen[p] = struct{}{}
		if e := g.Check(p); e != nil {
			e.Target = api.FormatTarget(p)
			refused = append(refused, e)
			continue
		}
		ok = append(ok, p)
	}
	return ok, refused
}

// unblock enforces an unblock decision. Caller holds dp.mu.
func (dp *Path) unblock(dec response.Decision, lift *Requester) (Outcome, error) {
	pl := unblockPlan{lift: lift}
	out, err := pl.add(dp.blocks, dec, dp.now().UnixMilli())
	if err != nil {
		return out, err
	}
	pl.audit = append(pl.audit, auditEvent{"unblock", decisionFields(dec, out)})
	if err := dp.commitUnblocks(&pl); err != nil {
		return Outcome{ID: dec.ID, Action: dec.Action}, err
	}
	return out, nil
}

// unblockPlan gathers the store change and its undo of one or more unblock
// decisions, which commitUnblocks applies together.
type unblockPlan struct {
	ch, undo store.Change
	present  []netip.Prefix // blocked targets to remove, distinct
	audit    []auditEvent   // the audit lines of the plan's decisions
	lift     *Requester     // lift only this requester's own blocks (EnforceOptions.Lift)
}

// add adds one unblock decision to pl: its targets must not be in
// pl already. A decision other than an admin's keeps an admin's block
// (Outcome.Kept). Caller holds dp.mu.
func (pl *unblockPlan) add(x *index, dec response.Decision, nowMs int64) (Outcome, error) {
	out := Outcome{ID: dec.ID, Action: dec.Action}
	if len(dec.Targets) == 0 {
		return out, api.Errorf(api.CodeBadRequest, "unblock: no targets")
	}
	seen := map[netip.Prefix]bool{}
	for _, p := range dec.Targets {
		if seen[p] {
			continue
		}
		seen[p] = true
		old, ok := x.get(p)
		if !ok || old.expired(nowMs) {
			out.NotFound = append(out.NotFound, api.FormatTarget(p))
			continue
		}
		if !dec.Admin && x.decision(old.dec).Admin { // only an admin lifts an admin's block
			out.Kept = append(out.Kept, api.FormatTarget(p))
			continue
		}
		if r := pl.lift; r != nil {
			dr := x.decision(old.dec)
			if dr.Source != r.Source || dr.Sender != r.Sender || old.created < dr.Time.UnixMilli() {
				out.Kept = append(out.Kept, api.FormatTarget(p)) // another cause made it, or holds it now
				continue
			}
		}
		out.Applied = append(out.Applied, p)
		pl.ch.DelBlocks = append(pl.ch.DelBlocks, p)
		pl.undo.PutBlocks = append(pl.undo.PutBlocks, store.Block{Prefix: p, Created: old.created, Until: old.until, Decision: old.dec})
	}
	out.Removed = len(out.Applied)
	pl.present = append(pl.present, out.Applied...)
	return out, nil
}

// commitUnblocks applies a plan: the store first (with the pending audit
// records), then the kernel, then the audit lines; if the kernel or the
// audit log fails, what was done is put back. Caller holds dp.mu.
func (dp *Path) commitUnblocks(pl *unblockPlan) error {
	if len(pl.present) == 0 { // nothing to change: only the audit lines
		if len(pl.audit) == 0 {
			return nil
		}
		return dp.rec.write(pl.audit, nil, nil)
	}
	for _, seq := range dp.blocks.orphans(pl.present) {
		pl.ch.DelDecisions = append(pl.ch.DelDecisions, seq)
		pl.undo.PutDecisions = append(pl.undo.PutDecisions, dp.blocks.decision(seq))
	}
	evs, keys, err := dp.rec.stage(&pl.ch, &pl.undo, pl.audit)
	if err != nil {
		return err
	}
	fw, back := dp.blocks.kernelDiff(pl.ch, dp.now().UnixMilli())
	if err := dp.store.Commit(pl.ch); err != nil {
		return &api.Error{Code: api.CodeStore, Message: err.Error()}
	}
	if err := dp.applyKernel(fw); err != nil {
		dp.restoreKernel(back) // part of a multi-transaction change may be in
		if uerr := dp.store.Commit(pl.undo); uerr != nil {
			dp.log.Error("store undo after firewall failure failed", "err", uerr)
		}
		dp.kernelError(err)
		return &api.Error{Code: api.CodeFirewall, Message: fmt.Sprintf("firewall: %v", err)}
	}
	if dp.crash != nil && dp.crash() {
		return api.Errorf(api.CodeInternal, "test: crashed after the store commit")
	}
	if err := dp.rec.write(pl.audit, evs, keys); err != nil {
		dp.restoreKernel(back)
		if uerr := dp.store.Commit(pl.undo); uerr != nil {
			dp.log.Error("store undo after audit failure failed; reconcile will re-assert", "err", uerr)
		}
		return err
	}
	for _, p := range pl.present {
		dp.blocks.del(p)
	}
	dp.blocks.settle()
	return nil
}

// commitPlan commits a planned change: the decisions that lose their last
// block to owners (targets taken over or lifted) are dropped with it, the
// store commit (with the pending audit records) runs beside the kernel
// diff, then the audit line is written; if any of the three fails, the
// others are undone and nothing changed. On success the plan's decisions
// are in the index; the caller puts its blocks. Caller holds dp.mu.
func (dp *Path) commitPlan(pl *blockPlan, owners []netip.Prefix) error {
	orphans := dp.blocks.orphans(owners)
	pl.ch.DelDecisions = orphans
	for _, o := range orphans {
		pl.undo.PutDecisions = append(pl.undo.PutDecisions, dp.blocks.decision(o))
	}
	evs, keys, err := dp.rec.stage(&pl.ch, &pl.undo, pl.audit)
	if err != nil {
		dp.blocks.lastSeq = pl.lastSeq
		return err
	}
	pl.fw, pl.back = dp.blocks.kernelDiff(pl.ch, pl.now.UnixMilli())
	fwDone := make(chan error, 1)
	go func() { fwDone <- dp.applyKernel(pl.fw) }()
	stErr := dp.store.Commit(pl.ch)
	fwErr := <-fwDone
	if stErr != nil || fwErr != nil {
		dp.blocks.lastSeq = pl.lastSeq
		return dp.undoBlock(pl.undo, pl.back, stErr, fwErr)
	}
	if dp.crash != nil && dp.crash() {
		return api.Errorf(api.CodeInternal, "test: crashed after the store commit")
	}
	if err := dp.rec.write(pl.audit, evs, keys); err != nil {
		dp.blocks.lastSeq = pl.lastSeq
		dp.restoreKernel(pl.back)
		if uerr := dp.store.Commit(pl.undo); uerr != nil {
			dp.log.Error("store undo after audit failure failed; reconcile will re-assert", "err", uerr)
		}
		return err
	}
	for _, dr := range pl.ch.PutDecisions {
		dp.blocks.addDecision(dr)
	}
	return nil
}
