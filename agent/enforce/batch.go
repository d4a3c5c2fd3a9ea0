package enforce

import (
	"context"
	"net/netip"

	"github.com/parryhq/parry/response"
)

// EnforceBatch enforces many decisions, in order, with one store commit
// (one fsync) and one kernel update per run of consecutive blocks, or of
// consecutive unblocks, whose targets are distinct. Anything else (a target
// repeated within the run, a lockdown, a dry run...) ends the run and goes
// through Enforce's path on its own, so the result is the same as enforcing
// the decisions one by one.
//
// Every decision is guarded first; a refused one is audited and changes
// nothing, and the others of the run go on. A decision reported applied
// (Outcome.Err nil) is durable and in the kernel. If the store commit or the
// kernel update of a run fails, both sides are put back and every decision
// of the run carries the error. Each decision gets its own audit line and
// its own observer call. The outcomes are in the order of decs.
func (dp *Path) EnforceBatch(ctx context.Context, decs []response.Decision, opt EnforceOptions) []Outcome {
	outs := make([]Outcome, len(decs))
	decs = append([]response.Decision(nil), decs...)
	for i := range decs {
		if decs[i].ID == "" {
			decs[i].ID = NewID()
		}
	}
	err := ctx.Err()
	if err == nil {
		err = dp.mu.lockWithin(ctx, dp.lockWait)
	}
	if err != nil {
		for i, dec := range decs {
			outs[i] = Outcome{ID: dec.ID, Action: dec.Action, Err: err}
		}
		return outs
	}
	defer dp.mu.Unlock()
	opts := make([]EnforceOptions, len(decs))
	for i := range opts {
		opts[i] = opt
	}
	dp.enforceRuns(decs, opts, outs)
	return outs
}

// runLen is the length of the run at the front of decs that can share one
// commit: blocks or unblocks (not dry runs), all of one action, no target in
// two of them. 0: the first decision goes alone.
func runLen(decs []response.Decision) int {
	act := decs[0].Action
	if decs[0].DryRun || (act != response.ActionBlock && act != response.ActionUnblock) {
		return 0
	}
	seen := map[netip.Prefix]int{}
	for i, dec := range decs {
		if dec.Action != act || dec.DryRun {
			return i
		}
		for _, p := range dec.Targets {
			if j, ok := seen[p]; ok && j != i {
				return i
			}
			seen[p] = i
		}
	}
	return len(decs)
}

// blockRun enforces a run of block decisions with distinct targets in one
// plan. Caller holds dp.mu.
func (dp *Path) blockRun(decs []response.Decision, outs []Outcome, opts []EnforceOptions) {
	pl := newBlockPlan(dp.now(), dp.blocks)
	targets := make([][]netip.Prefix, len(decs))
	capped := 0 // targets counted against the sender cap by this run
	for i, dec := range decs {
		opt := opts[i]
		out, ts, err := checkBlock(&dp.guard, dec, opt, pl.now)
		if err == nil && opt.SenderCap && dp.blocks.changes(dec, ts, pl.now.UnixMilli()) {
			err = dp.blockCap.admit(dec, pl.now)
		}
		if err != nil {
			outs[i] = Outcome{ID: dec.ID, Action: dec.Action, Err: err}
			continue
		}
		targets[i] = pl.add(dp.blocks, dec, ts, &out)
		if opt.SenderCap { // counted now, so that the run's next members see it; given back if the commit fails
			dp.blockCap.blocks += len(targets[i])
			capped += len(targets[i])
		}
		outs[i] = out
		applied := dec
		applied.Targets = targets[i]
		pl.audit = append(pl.audit, auditEvent{"block", decisionFields(applied, out)})
	}
	err := dp.commitBlocks(pl)
	if err != nil {
		dp.blockCap.blocks = max(0, dp.blockCap.blocks-capped)
	}
	for i, dec := range decs {
		switch {
		case outs[i].Err != nil:
		case err != nil:
			outs[i] = Outcome{ID: dec.ID, Action: dec.Action, Err: err}
		default:
			outs[i].Applied = targets[i]
		}
		dp.finish(dec, outs[i])
	}
}

// unblockRun enforces a run of unblock decisions with distinct targets in
// one plan. Caller holds dp.mu.
func (dp *Path) unblockRun(decs []response.Decision, outs []Outcome, opts []EnforceOptions) {
	var pl unblockPlan
	nowMs := dp.now().UnixMilli()
	for i, dec := range decs {
		pl.lift = opts[i].Lift // each decision's own (EnforceOptions.Lift)
		out, err := pl.add(dp.blocks, dec, nowMs)
		out.Err = err
		outs[i] = out
		if err == nil {
			pl.audit = append(pl.audit, auditEvent{"unblock", decisionFields(dec, out)})
		}
	}
	err := dp.commitUnblocks(&pl)
	for i, dec := range decs {
		switch {
		case outs[i].Err != nil:
		case err != nil:
			outs[i] = Outcome{ID: dec.ID, Action: dec.Action, Err: err}
		}
		dp.finish(dec, outs[i])
	}
}
