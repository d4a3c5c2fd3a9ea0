package enforce

import (
	"context"
	"encoding/json"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/parryhq/parry/agent/api"
)

// Query selects active blocks (parry list's filters). Zero fields do not
// filter; all set fields must hold.
type Query struct {
	Contains netip.Addr    // blocks whose target contains this address
	Source   string        // exact source (cli, policy, feed:NAME ...)
	Origin   string        // exact origin ("local": none)
	Reason   string        // substring of the reason, case-insensitive
	Since    time.Time     // created at or after
	Expiring time.Duration // ending within this long from now (permanent blocks never match)
}

// Empty reports whether q selects every block.
func (q Query) Empty() bool { return q == Query{} }

// Covering returns the active blocks whose target contains a, in prefix
// order (broadest first): one map lookup per prefix length in use, so it
// costs the same over 100 or 1,000,000 blocks. Caller holds dp.mu.
func (x *index) covering(a netip.Addr, nowMs int64) []netip.Prefix {
	a = a.Unmap()
	f := 0
	if a.Is6() {
		f = 1
	}
	var out []netip.Prefix
	for l := 0; l <= a.BitLen(); l++ {
		if x.lens[f][l] == 0 {
			continue
		}
		p, err := a.Prefix(l)
		if err != nil {
			continue
		}
		if e, ok := x.m.get(p); ok && !e.expired(nowMs) {
			out = append(out, p)
		}
	}
	return out
}

// Query lists the active blocks q selects, in address order, from memory.
// With Contains it looks up only the blocks covering that address; else
// it scans. It waits for another change at most LockWait (busy) or until
// ctx ends.
func (dp *Path) Query(ctx context.Context, q Query) ([]api.BlockInfo, error) {
	if err := dp.mu.lockWithin(ctx, dp.lockWait); err != nil {
		return nil, err
	}
	defer dp.mu.Unlock()
	now := dp.now()
	nowMs := now.UnixMilli()
	reason := strings.ToLower(q.Reason)
	sinceMs, expMs := int64(0), int64(0)
	if !q.Since.IsZero() {
		sinceMs = q.Since.UnixMilli()
	}
	if q.Expiring > 0 {
		expMs = now.Add(q.Expiring).UnixMilli()
	}
	match := func(p netip.Prefix, e entry) bool {
		if e.expired(nowMs) || (sinceMs != 0 && e.created < sinceMs) || (expMs != 0 && (e.until == 0 || e.until > expMs)) {
			return false
		}
		if q.Contains.IsValid() && !p.Contains(q.Contains.Unmap()) {
			return false
		}
		dr := dp.blocks.decision(e.dec)
		origin := dr.Origin
		if origin == "" {
			origin = "local"
		}
		return (q.Source == "" || dr.Source == q.Source) && (q.Origin == "" || origin == q.Origin) &&
			(reason == "" || strings.Contains(strings.ToLower(dr.Reason), reason))
	}
	var ps []netip.Prefix
	if q.Contains.IsValid() {
		for _, p := range dp.blocks.covering(q.Contains, nowMs) {
			if match(p, dp.blocks.m.at(p)) {
				ps = append(ps, p)
			}
		}
	} else {
		for p, e := range dp.blocks.m.all() {
			if match(p, e) {
				ps = append(ps, p)
			}
		}
	}
	slices.SortFunc(ps, func(a, b netip.Prefix) int {
		if c := a.Addr().Compare(b.Addr()); c != 0 {
			return c
		}
		return a.Bits() - b.Bits()
	})
	out := make([]api.BlockInfo, len(ps))
	for i, p := range ps {
		out[i] = dp.blockInfo(p, dp.blocks.m.at(p))
	}
	return out, nil
}

// blockInfo is one block as list shows it. Caller holds dp.mu.
func (dp *Path) blockInfo(q netip.Prefix, e entry) api.BlockInfo {
	dr := dp.blocks.decision(e.dec)
	bi := api.BlockInfo{Target: api.FormatTarget(q), ID: dr.ID, Created: time.UnixMilli(e.created).UTC(),
		Reason: dr.Reason, Source: dr.Source, Origin: dr.Origin, Rule: dr.Rule, Sender: dr.Sender}
	if e.until != 0 {
		bi.Until = time.UnixMilli(e.until).UTC()
	}
	return bi
}

// Why answers `parry why a` from memory (the covering blocks) and the
// store (each decision's cause, one read per decision). It waits for
// another change at most LockWait (busy) or until ctx ends.
func (dp *Path) Why(ctx context.Context, a netip.Addr) (api.Why, error) {
	if err := dp.mu.lockWithin(ctx, dp.lockWait); err != nil {
		return api.Why{}, err
	}
	nowMs := dp.now().UnixMilli()
	ps := dp.blocks.covering(a, nowMs)
	w := api.Why{Addr: a.Unmap().String(), Blocks: make([]api.WhyBlock, 0, len(ps))}
	seqs := make([]uint64, len(ps))
	for i, p := range ps {
		e := dp.blocks.m.at(p)
		dr := dp.blocks.decision(e.dec)
		w.Blocks = append(w.Blocks, api.WhyBlock{BlockInfo: dp.blockInfo(p, e), Decided: dr.Time, Admin: dr.Admin})
		seqs[i] = e.dec
	}
	dp.mu.Unlock()
	// The causes stay in the store only (the index keeps the text).
	for i, seq := range seqs {
		dr, ok, err := dp.store.Decision(seq)
		if err != nil {
			return api.Why{}, &api.Error{Code: api.CodeStore, Message: err.Error()}
		}
		if ok && len(dr.Cause) > 0 && json.Valid(dr.Cause) {
			w.Blocks[i].Cause = dr.Cause
		}
	}
	return w, nil
}
