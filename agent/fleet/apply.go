package fleet

import (
	"context"
	"net/netip"
	"strings"
	"time"

	"github.com/parryhq/parry/response"
)

const (
	// maxGroup bounds the targets merged into one remote decision.
	maxGroup = 1000
	// maxBatch bounds the entries handed to the agent at once (one store
	// commit and one kernel update there).
	maxBatch = 4096
	// In a burst (the previous batch was applied less than burstGap ago),
	// the apply loop waits for more entries while they keep arriving at
	// most linger apart, for at most lingerMax in all.
	burstGap  = 20 * time.Millisecond
	linger    = 2 * time.Millisecond
	lingerMax = 10 * time.Millisecond
)

// inbound is one message read from the stream, checked, in stream order.
type inbound struct {
	seq   uint64 // stream sequence
	last  bool   // nothing was pending after it when delivered
	apply bool   // e is to be enforced
	e     entry
}

// applyLoop enforces received entries in stream order, in batches: what
// is waiting (a catch-up, or what arrived during the previous commit), and
// in a burst what arrives within a few milliseconds more. Consecutive
// entries of one decision (same origin, base id, action, expiry and text)
// are merged into one decision with many targets, and the agent applies a
// batch of decisions with one store commit and one kernel update, so that
// a catch-up or a burst does not cost one fsync per decision.
func (f *Fleet) applyLoop(ctx context.Context) {
	batch := make([]inbound, 0, maxBatch)
	var applied time.Time
	for {
		batch = batch[:0]
		select {
		case <-ctx.Done():
			return
		case in := <-f.inbox:
			batch = append(batch, in)
		}
		batch = f.collect(ctx, batch, f.now().Sub(applied) < burstGap)
		f.applyBatch(ctx, batch)
		applied = f.now()
		for _, in := range batch {
			if in.seq != 0 {
				f.lastSeq.Store(in.seq)
			}
			if in.last {
				f.markCaughtUp()
			}
		}
	}
}

// collect adds what is waiting in the inbox to batch and, in a burst, what
// arrives shortly after.
func (f *Fleet) collect(ctx context.Context, batch []inbound, burst bool) []inbound {
	var gap *time.Timer
	end := f.now().Add(lingerMax)
	for len(batch) < maxBatch {
		select {
		case in := <-f.inbox:
			batch = append(batch, in)
			continue
		default:
		}
		wait := min(linger, end.Sub(f.now()))
		if !burst || wait <= 0 {
			return batch
		}
		if gap == nil {
			gap = time.NewTimer(wait)
			defer gap.Stop()
		} else {
			gap.Reset(wait)
		}
		select {
		case in := <-f.inbox:
			batch = append(batch, in)
		case <-gap.C:
			return batch
		case <-ctx.Done():
			return batch
		}
	}
	return batch
}

// applyBatch merges the entries of batch into decisions and has the agent
// enforce them together; it counts the outcome per target.
func (f *Fleet) applyBatch(ctx context.Context, batch []inbound) {
	var decs []response.Decision
	var sizes []int
	for len(batch) > 0 {
		n, d, ok := groupAt(batch)
		if ok {
			decs, sizes = append(decs, d), append(sizes, n)
		}
		batch = batch[n:]
	}
	if len(decs) == 0 {
		return
	}
	res := f.apply.ApplyRemoteBatch(ctx, decs)
	for i, d := range decs {
		var r Result
		if i < len(res) {
			r = res[i]
		}
		f.account(d, sizes[i], r)
	}
}

// groupAt returns the length of the mergeable run at the front of batch (at
// least one item) and, unless it is not to be applied, its decision.
func groupAt(batch []inbound) (int, response.Decision, bool) {
	if !batch[0].apply {
		return 1, response.Decision{}, false
	}
	first := batch[0].e
	n := 1
	for n < len(batch) && n < maxGroup && batch[n].apply && sameDecision(first, batch[n].e) {
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
	return n, d, true
}

// account counts what the agent did with one decision of n targets.
func (f *Fleet) account(d response.Decision, n int, r Result) {
	switch {
	case r.Err != nil:
		f.refused.Add(uint64(n))
		f.log.Info("fleet decision not applied here", "id", d.ID, "origin", d.Origin, "targets", n, "err", r.Err)
	default:
		f.refused.Add(uint64(r.Refused))
		f.applied.Add(uint64(n - r.Refused))
		if r.Refused > 0 {
			f.log.Info("fleet decision partly refused here", "id", d.ID, "origin", d.Origin, "refused", r.Refused, "of", n)
		}
	}
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
