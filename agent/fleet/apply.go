package fleet

import (
	"context"
	"net/netip"
	"strings"
)

// maxGroup bounds the targets merged into one remote decision.
const maxGroup = 1000

// inbound is one message read from the stream, checked, in stream order.
type inbound struct {
	seq   uint64 // stream sequence
	last  bool   // nothing was pending after it when delivered
	apply bool   // e is to be enforced
	e     entry
}

// applyLoop enforces received entries in stream order. Consecutive entries
// of one decision (same origin, base id, action, expiry and text) are
// merged into one decision with many targets, so that a large decision or a
// catch-up costs the agent one commit per group, not one per target.
func (f *Fleet) applyLoop(ctx context.Context) {
	batch := make([]inbound, 0, maxGroup)
	for {
		batch = batch[:0]
		select {
		case <-ctx.Done():
			return
		case in := <-f.inbox:
			batch = append(batch, in)
		}
	drain:
		for len(batch) < maxGroup {
			select {
			case in := <-f.inbox:
				batch = append(batch, in)
			default:
				break drain
			}
		}
		for len(batch) > 0 {
			n := f.applyGroup(ctx, batch)
			for _, in := range batch[:n] {
				if in.seq != 0 {
					f.lastSeq.Store(in.seq)
				}
				if in.last {
					f.markCaughtUp()
				}
			}
			batch = batch[n:]
		}
	}
}

// applyGroup enforces the longest mergeable run at the front of batch (at
// least one item) and returns its length.
func (f *Fleet) applyGroup(ctx context.Context, batch []inbound) int {
	if !batch[0].apply {
		return 1
	}
	first := batch[0].e
	n := 1
	for n < len(batch) && batch[n].apply && sameDecision(first, batch[n].e) {
		n++
	}
	d := first.decision()
	if n > 1 {
		d.ID = baseID(first.ID)
		d.Targets = make([]netip.Prefix, n)
		for i, in := range batch[:n] {
			d.Targets[i] = in.e.Target
		}
	}
	refused, err := f.apply.ApplyRemote(ctx, d)
	switch {
	case err != nil:
		f.refused.Add(uint64(n))
		f.log.Info("fleet decision not applied here", "id", d.ID, "origin", d.Origin, "targets", n, "err", err)
	default:
		f.refused.Add(uint64(refused))
		f.applied.Add(uint64(n - refused))
		if refused > 0 {
			f.log.Info("fleet decision partly refused here", "id", d.ID, "origin", d.Origin, "refused", refused, "of", n)
		}
	}
	return n
}

func sameDecision(a, b entry) bool {
	return a.Origin == b.Origin && a.Action == b.Action && a.Until.Equal(b.Until) &&
		baseID(a.ID) == baseID(b.ID) && a.Reason == b.Reason && a.Source == b.Source && a.Rule == b.Rule
}

// baseID strips the "#i" an entry of a multi-target decision carries.
func baseID(id string) string {
	if i := strings.LastIndexByte(id, '#'); i > 0 {
		return id[:i]
	}
	return id
}
