package response

import (
	"math"
	"net/netip"
	"slices"
	"time"
)

// Offender is the escalation memory of one address or prefix (what the
// rule blocked: an IPv6 /64 by default): how many times the policy has
// blocked it, and when last. The agent persists Snapshot in its store and
// hands it back to Restore on start, so escalation survives restarts.
type Offender struct {
	Addr  netip.Addr `json:"addr"`
	Bits  int        `json:"bits,omitempty"` // prefix length; 0 (older records): the address alone
	Count int        `json:"count"`          // blocks so far
	Last  time.Time  `json:"last"`           // time of the last block
}

// prefix is the offender's key.
func (o Offender) prefix() netip.Prefix {
	if o.Bits == 0 || o.Bits > o.Addr.BitLen() {
		return netip.PrefixFrom(o.Addr, o.Addr.BitLen())
	}
	return netip.PrefixFrom(o.Addr, o.Bits).Masked()
}

// escalate returns how long a block of addr should last and how many
// earlier blocks within escalation.remember it follows. When record is
// true the block is remembered (dry runs are not: they never happened).
func (e *Engine) escalate(p netip.Prefix, base time.Duration, now time.Time, record bool) (time.Duration, int) {
	esc := e.cfg.Escalation
	prior := 0
	if n, ok := e.offenders.peek(p); ok && now.Sub(n.val.Last) < esc.Remember.D() {
		prior = n.val.Count
	}
	dur := scale(base, esc.Factor, prior, max(esc.Max.D(), base))
	if record {
		o := Offender{Addr: p.Addr(), Count: prior + 1, Last: now}
		if !p.IsSingleIP() {
			o.Bits = p.Bits()
		}
		_, evicted := e.offenders.put(p, o)
		e.stats.EvictedOffenders += uint64(evicted)
	}
	return dur, prior
}

// scale returns base*factor^n, capped at limit, without overflow.
func scale(base time.Duration, factor float64, n int, limit time.Duration) time.Duration {
	d := float64(base) * math.Pow(factor, float64(n))
	if math.IsInf(d, 0) || math.IsNaN(d) || d >= float64(limit) {
		return limit
	}
	return time.Duration(d)
}

// Snapshot returns the escalation memory that is still remembered, least
// recently blocked first.
func (e *Engine) Snapshot() []Offender {
	e.mu.Lock()
	defer e.mu.Unlock()
	now := e.now()
	out := make([]Offender, 0, e.offenders.len())
	e.offenders.each(func(n *node[netip.Prefix, Offender]) {
		if now.Sub(n.val.Last) < e.cfg.Escalation.Remember.D() {
			out = append(out, n.val)
		}
	})
	return out
}

// Restore merges saved escalation memory into the engine: entries already
// forgotten, invalid or with no blocks are skipped; for an address known
// both ways the later block wins; beyond max_offenders the least recently
// blocked go. It returns how many entries were taken.
func (e *Engine) Restore(saved []Offender) int {
	e.mu.Lock()
	defer e.mu.Unlock()
	now := e.now()
	saved = slices.Clone(saved)
	slices.SortStableFunc(saved, func(a, b Offender) int { return a.Last.Compare(b.Last) })
	taken := 0
	for _, o := range saved {
		if !o.Addr.IsValid() || o.Count <= 0 || now.Sub(o.Last) >= e.cfg.Escalation.Remember.D() {
			continue
		}
		o.Addr = o.Addr.Unmap().WithZone("")
		p := o.prefix()
		o.Addr = p.Addr()
		if n, ok := e.offenders.peek(p); ok && !o.Last.After(n.val.Last) {
			continue
		}
		_, evicted := e.offenders.put(p, o)
		e.stats.EvictedOffenders += uint64(evicted)
		taken++
	}
	return taken
}

// Offender returns the escalation memory of the narrowest remembered
// prefix holding addr (the address itself, or its /64 ...).
func (e *Engine) Offender(addr netip.Addr) (Offender, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	addr = addr.Unmap().WithZone("")
	for l := addr.BitLen(); l >= 0; l-- {
		p, _ := addr.Prefix(l)
		n, ok := e.offenders.peek(p)
		if ok && e.now().Sub(n.val.Last) < e.cfg.Escalation.Remember.D() {
			return n.val, true
		}
	}
	return Offender{}, false
}
