package control

import (
	"cmp"
	"math"
	"slices"
	"sync"
	"time"
)

// refuseInterval is how long repeated refusals of one (uid, op) are
// counted before their summary line is written.
const refuseInterval = 10 * time.Second

// maxRefuseKeys bounds the (uid, op) pairs being counted; beyond it, the
// refusals of new pairs are counted together under op "*".
const maxRefuseKeys = 1024

// refusals aggregates the audit lines of repeated refusals, so that a peer
// with no rights cannot fill the audit log by asking again and again. The
// first refusal of a (uid, op) is recorded at once; the later ones are
// counted, and one summary line per interval says how many there were
// (also written at close). A pair quiet for a whole interval starts over.
// It owns its map, timer and lock; emit is called without the lock held.
type refusals struct {
	interval time.Duration
	now      func() time.Time
	emit     func(fields map[string]any)

	mu     sync.Mutex
	m      map[refuseKey]*refuseCount
	timer  *time.Timer // runs while m is not empty
	closed bool
}

type refuseKey struct {
	uid uint32
	op  string
}

type refuseCount struct {
	n           int            // refusals since the last line of this key
	since, last time.Time      // of the counted refusals
	fields      map[string]any // of the last refusal counted
}

func newRefusals(interval time.Duration, now func() time.Time, emit func(map[string]any)) *refusals {
	return &refusals{interval: interval, now: now, emit: emit, m: map[refuseKey]*refuseCount{}}
}

// note records one refusal of op for uid, described by fields.
func (r *refusals) note(uid uint32, op string, fields map[string]any) {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		r.emit(fields)
		return
	}
	k := refuseKey{uid, op}
	if _, ok := r.m[k]; !ok && len(r.m) >= maxRefuseKeys {
		k = refuseKey{math.MaxUint32, "*"}
	}
	if c, ok := r.m[k]; ok {
		now := r.now()
		if c.n == 0 {
			c.since = now
		}
		c.n, c.last, c.fields = c.n+1, now, fields
		r.mu.Unlock()
		return
	}
	r.m[k] = &refuseCount{}
	if r.timer == nil {
		r.timer = time.AfterFunc(r.interval, r.tick)
	}
	r.mu.Unlock()
	r.emit(fields)
}

// tick writes the summaries of the interval that ended and forgets the
// pairs that were quiet in it.
func (r *refusals) tick() {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return
	}
	lines := r.summaries(false)
	if len(r.m) > 0 {
		r.timer.Reset(r.interval)
	} else {
		r.timer = nil
	}
	r.mu.Unlock()
	for _, f := range lines {
		r.emit(f)
	}
}

// close writes the pending summaries; later refusals are recorded one by one.
func (r *refusals) close() {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return
	}
	r.closed = true
	if r.timer != nil {
		r.timer.Stop()
	}
	lines := r.summaries(true)
	r.mu.Unlock()
	for _, f := range lines {
		r.emit(f)
	}
}

// summaries renders one line per key with counted refusals (in key
// order), resets the counts and drops the keys with none (all: every key).
func (r *refusals) summaries(all bool) []map[string]any {
	keys := make([]refuseKey, 0, len(r.m))
	for k := range r.m {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b refuseKey) int { return cmp.Or(cmp.Compare(a.uid, b.uid), cmp.Compare(a.op, b.op)) })
	var lines []map[string]any
	for _, k := range keys {
		c := r.m[k]
		if c.n > 0 {
			f := make(map[string]any, len(c.fields)+4)
			for name, v := range c.fields {
				f[name] = v
			}
			if k.op == "*" {
				f["op"] = "*"
				delete(f, "sender")
			}
			f["count"], f["since"], f["until"] = c.n, c.since.UTC(), c.last.UTC()
			lines = append(lines, f)
		}
		if c.n == 0 || all {
			delete(r.m, k)
		} else {
			c.n = 0
		}
	}
	return lines
}
