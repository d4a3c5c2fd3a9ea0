package enforce

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"time"

	"github.com/parryhq/parry/agent/api"
	"github.com/parryhq/parry/agent/store"
	"github.com/parryhq/parry/response"
)

// FeedSource is the mark (Source and Origin) of the blocks of feed name.
func FeedSource(name string) string { return "feed:" + name }

// FeedChange is one refresh of a blocklist feed, applied by ApplyFeed as
// one transaction.
type FeedChange struct {
	Feed  string         // the feed's name; its blocks are marked feed:NAME
	Block []netip.Prefix // entries added or kept: blocked, or renewed, until Until
	Lift  []netip.Prefix // entries removed from the feed: lifted where the block is the feed's own
	Until time.Time      // expiry of Block (now + the feed's `for`)
	// KV is stored in the same store transaction (the feed's last good
	// state), nil values deleting.
	KV map[string][]byte
}

// FeedOutcome is what ApplyFeed did.
type FeedOutcome struct {
	ID      string            `json:"decision_id"`
	Added   int               `json:"added"`                     // new blocks
	Renewed int               `json:"renewed"`                   // blocks whose expiry moved (the feed's own, or another cause's shorter block, taken over)
	Kept    int               `json:"kept"`                      // blocked already at least as long, or an admin's block: left as it is
	Lifted  int               `json:"lifted"`                    // the feed's own blocks of removed entries, lifted
	Others  int               `json:"others"`                    // removed entries blocked by another cause (an admin, the policy, another feed): left
	Carved  int               `json:"carved"`                    // entries overlapping guarded ranges, blocked minus those ranges
	Refused map[string]int    `json:"refused,omitempty"`         // entries the guard refused, by code (allowlisted, own_address, overlap...)
	Example map[string]string `json:"refused_example,omitempty"` // one refused entry per code
}

// RefusedTotal is the number of refused entries.
func (o FeedOutcome) RefusedTotal() int {
	n := 0
	for _, c := range o.Refused {
		n += c
	}
	return n
}

// feedAuditSample bounds the targets named in a feed's audit line and
// observer call: a 100,000-entry refresh is one line with its counts, not
// 100,000 targets.
const feedAuditSample = 20

// ApplyFeed applies one refresh of a feed through the path: the entries
// of fc.Block are guarded (the feed's own broadest prefix was enforced by
// the feed; loopback, link-local, multicast, own addresses and the
// allowlist are refused and counted), then blocked or renewed until
// fc.Until under the usual precedence (a feed never shortens a block, and
// an admin's block stays the admin's); the entries of fc.Lift are lifted
// where the block is this feed's own, never another cause's. The store
// change, fc.KV, the kernel update and one audit line ("feed") are one
// transaction: on error nothing changed. It waits for another change at
// most LockWait (busy) or until ctx ends.
//
// An entry overlapping the allowlist, the host's own addresses or the
// ranges parry never blocks is carved around them (carveEntries). An
// entry may overlap any other block: the kernel holds their union.
func (dp *Path) ApplyFeed(ctx context.Context, fc FeedChange) (FeedOutcome, error) {
	out := FeedOutcome{ID: NewID()}
	if err := ctx.Err(); err != nil {
		return out, err
	}
	if fc.Feed == "" {
		return out, api.Errorf(api.CodeBadRequest, "feed: no name")
	}
	if len(fc.Block) > 0 && !fc.Until.After(dp.now()) {
		return out, api.Errorf(api.CodeInvalidDuration, "feed %s: until %s is not in the future", fc.Feed, fc.Until.Format(time.RFC3339))
	}
	if err := dp.mu.lockWithin(ctx, dp.lockWait); err != nil {
		return out, err
	}
	defer dp.mu.Unlock()
	src := FeedSource(fc.Feed)
	dec := response.Decision{ID: out.ID, Action: response.ActionBlock, Until: fc.Until,
		Reason: "listed by feed " + fc.Feed, Source: src, Origin: src}
	pl := newBlockPlan(dp.now(), dp.blocks)
	nowMs := pl.now.UnixMilli()
	// The feed's own broadest prefix was the feed's to enforce.
	g := dp.guard
	g.MinV4, g.MinV6 = 1, 1

	// An entry overlapping what the guard protects (the allowlist, own
	// addresses, loopback...) is carved: the kernel gets the rest of it.
	// The pieces follow from the entry and the guard, so a removed entry
	// lifts the same pieces; a kept entry now carved (the allowlist grew)
	// lifts its whole block.
	block, carvedWhole, nCarved := carveEntries(&g, fc.Block)
	lift, _, _ := carveEntries(&g, fc.Lift)
	out.Carved = nCarved
	lift = append(lift, carvedWhole...)

	// Lifts first: the feed's own blocks of removed entries.
	var lifted []netip.Prefix
	var liftUndo []store.Block
	for _, p := range lift {
		old, ok := dp.blocks.get(p)
		if !ok || old.expired(nowMs) {
			continue
		}
		if dp.blocks.decision(old.dec).Source != src {
			if !slices.Contains(carvedWhole, p) {
				out.Others++
			}
			continue
		}
		lifted = append(lifted, p)
		liftUndo = append(liftUndo, store.Block{Prefix: p, Created: old.created, Until: old.until, Decision: old.dec})
	}
	out.Lifted = len(lifted)

	var targets []netip.Prefix
	var refused []*api.Error
	targets, refused = checkFeedTargets(&g, block)
	for _, r := range refused {
		if out.Refused == nil {
			out.Refused, out.Example = map[string]int{}, map[string]string{}
		}
		out.Refused[r.Code]++
		if _, ok := out.Example[r.Code]; !ok {
			out.Example[r.Code] = r.Message
		}
	}
	var bo Outcome
	changed := pl.add(dp.blocks, dec, targets, &bo)
	out.Added, out.Renewed, out.Kept = bo.Added, bo.Updated, len(bo.Kept)

	if len(changed) == 0 && len(lifted) == 0 && len(fc.KV) == 0 {
		return out, nil
	}
	pl.ch.DelBlocks = append(pl.ch.DelBlocks, lifted...)
	pl.undo.PutBlocks = append(pl.undo.PutBlocks, liftUndo...)
	pl.ch.PutKV = fc.KV
	if len(fc.KV) > 0 {
		undoKV := make(map[string][]byte, len(fc.KV))
		for k := range fc.KV {
			old, err := dp.store.Get(k)
			if err != nil {
				return out, &api.Error{Code: api.CodeStore, Message: err.Error()}
			}
			undoKV[k] = old
		}
		pl.undo.PutKV = undoKV
	}
	pl.audit = []auditEvent{{"feed", feedFields(fc, dec, out, changed, lifted)}}
	if err := dp.commitFeed(pl, lifted); err != nil {
		return FeedOutcome{ID: out.ID}, err
	}
	// The observers hear of the refresh with its counts and the first few
	// targets: a 1,000,000-entry feed must not become a webhook or a
	// connection lookup of a million targets (the audit line is the same).
	applied := dec
	applied.Targets = sample(changed)
	applied.Reason = fmt.Sprintf("%s (%d blocked or renewed)", dec.Reason, len(changed))
	dp.finish(applied, Outcome{ID: dec.ID, Action: dec.Action, Added: out.Added, Updated: out.Renewed, Until: fc.Until, Applied: applied.Targets})
	if len(lifted) > 0 {
		un := response.Decision{ID: NewID(), Action: response.ActionUnblock, Targets: sample(lifted),
			Reason: fmt.Sprintf("no longer listed by feed %s (%d lifted)", fc.Feed, len(lifted)), Source: src, Origin: src}
		dp.finish(un, Outcome{ID: un.ID, Action: un.Action, Removed: len(lifted), Applied: un.Targets})
	}
	return out, nil
}

// carveEntries replaces each entry the guard refuses for what overlaps it
// by the pieces of it outside the guarded ranges (carveHoles). It returns
// the entries and pieces, the carved entries, and how many were carved.
// An entry the guard refuses for itself, or that nothing would remain of,
// stays as it is (checkFeedTargets refuses it with its code).
func carveEntries(g *Guard, in []netip.Prefix) (out, carved []netip.Prefix, n int) {
	var holes []netip.Prefix
	for i, p := range in {
		e := g.Check(p)
		if e == nil || p.IsSingleIP() || !carvable(e.Code) {
			if out != nil {
				out = append(out, p)
			}
			continue
		}
		if holes == nil {
			holes = g.holes()
		}
		pieces, ok := carveHoles(p, holes)
		if !ok || len(pieces) == 0 {
			if out != nil {
				out = append(out, p)
			}
			continue
		}
		if out == nil {
			out = append(make([]netip.Prefix, 0, len(in)+len(pieces)), in[:i]...)
		}
		out = append(out, pieces...)
		carved = append(carved, p)
		n++
	}
	if out == nil {
		out = in
	}
	return out, carved, n
}

// checkFeedTargets runs the guard on a feed's entries. They may overlap
// the blocks in force (the kernel gets the union, kunion.go).
func checkFeedTargets(g *Guard, in []netip.Prefix) ([]netip.Prefix, []*api.Error) {
	ok := make([]netip.Prefix, 0, len(in))
	var refused []*api.Error
	for _, p := range in {
		if e := g.Check(p); e != nil {
			e.Target = api.FormatTarget(p)
			refused = append(refused, e)
			continue
		}
		ok = append(ok, p)
	}
	return ok, refused
}

// sample is the first feedAuditSample of ps, copied.
func sample(ps []netip.Prefix) []netip.Prefix {
	return slices.Clone(ps[:min(len(ps), feedAuditSample)])
}

// feedFields are the audit fields of one feed refresh: counts, and the
// first few targets of each kind.
func feedFields(fc FeedChange, dec response.Decision, out FeedOutcome, changed, lifted []netip.Prefix) map[string]any {
	f := map[string]any{"id": dec.ID, "action": "feed", "feed": fc.Feed, "source": dec.Source, "origin": dec.Origin,
		"until": fc.Until.UTC().Format(time.RFC3339), "added": out.Added, "renewed": out.Renewed, "kept": out.Kept,
		"lifted": out.Lifted, "others": out.Others, "carved": out.Carved}
	if len(changed) > 0 {
		f["blocked"] = targetStrings(sample(changed))
	}
	if len(lifted) > 0 {
		f["unblocked"] = targetStrings(sample(lifted))
	}
	if len(out.Refused) > 0 {
		f["refused"] = out.Refused
		f["refused_example"] = out.Example
	}
	return f
}

// commitFeed applies a feed's plan: the store (blocks, lifts, state and
// the pending audit record) in one commit beside the kernel update (lifts,
// then blocks), then the audit line; if any fails, the others are undone.
// Caller holds dp.mu.
func (dp *Path) commitFeed(pl *blockPlan, lifted []netip.Prefix) error {
	if err := dp.commitPlan(pl, append(slices.Clone(pl.targets), lifted...)); err != nil {
		return err
	}
	for _, p := range lifted {
		dp.blocks.del(p)
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
