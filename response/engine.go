package response

import (
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"time"
)

// Options are the engine's injected dependencies.
type Options struct {
	Now func() time.Time // default time.Now
	// Protect lists addresses the policy never blocks (the allowlist, the
	// host's own addresses). Loopback, unspecified and multicast addresses are
	// always protected. A block rule that fires for a protected address makes
	// a notify decision instead.
	Protect []netip.Prefix
}

// Outcome says what a signal led to.
type Outcome string

// The outcomes of Handle.
const (
	OutcomeNoRule  Outcome = "no_rule" // recorded, no rule counts this kind (or the signal lacks the rule's key)
	OutcomeCounted Outcome = "counted" // counted towards a threshold, nothing decided yet
	OutcomeDecided Outcome = "decided" // at least one rule fired
)

// Progress is how far one key of a rule is towards its threshold.
type Progress struct {
	Rule      string        `json:"rule"`
	Key       string        `json:"key"` // "ip 203.0.113.7", "user alice", "ip 203.0.113.7 user alice", "all"
	Count     int           `json:"count"`
	Threshold int           `json:"threshold"`
	Window    time.Duration `json:"window"`
}

// Result is what the engine made of one signal.
type Result struct {
	Outcome   Outcome    `json:"outcome"`
	Progress  []Progress `json:"progress,omitempty"`
	Decisions []Decision `json:"decisions,omitempty"`
}

// Stats are running counters for metrics.
type Stats struct {
	Signals          uint64 // signals handled
	NoRule           uint64 // signals no rule counted
	Decisions        uint64 // decisions made (dry run included)
	RateLimited      uint64 // signals refused by Admit
	EvictedKeys      uint64 // counting state dropped to stay within max_keys
	EvictedOffenders uint64 // escalation memory dropped to stay within max_offenders
	Keys             int    // counting state entries now
	Offenders        int    // escalation memory entries now
}

// stateKey identifies one counter: a rule and the key's parts.
type stateKey struct {
	rule int32
	ip   netip.Addr
	user string
}

// counter holds the recent signal times of one key (at most threshold) and
// the last few signals themselves (at most cause_signals) as the cause.
type counter struct {
	times ring[int64]
	cause ring[Signal]
}

// Engine is the policy: signals in, decisions out. Safe for concurrent use.
type Engine struct {
	mu        sync.Mutex
	cfg       Config // defaults filled in
	rules     []Rule
	byKind    map[string][]int32 // rule indexes per kind, "*" rules included, in order
	anyKind   []int32            // "*" rules alone, for kinds no rule names
	now       func() time.Time
	protect   []netip.Prefix
	keys      *lru[stateKey, counter]
	offenders *lru[netip.Prefix, Offender]
	limiter   *limiter
	stats     Stats
}

// New validates cfg and builds an engine with empty state.
func New(cfg Config, opts Options) (*Engine, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	e := &Engine{
		cfg:       cfg,
		rules:     cfg.EffectiveRules(),
		byKind:    map[string][]int32{},
		now:       opts.Now,
		protect:   slices.Clone(opts.Protect),
		keys:      newLRU[stateKey, counter](cfg.Limits.MaxKeys),
		offenders: newLRU[netip.Prefix, Offender](cfg.Limits.MaxOffenders),
		limiter:   newLimiter(cfg.Limits.SenderRate, cfg.Limits.SenderBurst, cfg.Limits.MaxSenders),
	}
	if e.now == nil {
		e.now = time.Now
	}
	for i, r := range e.rules {
		if r.Kind == "*" {
			e.anyKind = append(e.anyKind, int32(i))
		}
	}
	for _, r := range e.rules {
		if r.Kind == "*" || e.byKind[r.Kind] != nil {
			continue
		}
		for j, s := range e.rules { // every rule for this kind or "*", in order
			if s.Kind == r.Kind || s.Kind == "*" {
				e.byKind[r.Kind] = append(e.byKind[r.Kind], int32(j))
			}
		}
	}
	return e, nil
}

// Rules returns the rules in force, defaults filled in.
func (e *Engine) Rules() []Rule { return slices.Clone(e.rules) }

// Config returns the configuration in force, defaults filled in.
func (e *Engine) Config() Config { return e.cfg }

// Authorize is Config.Authorize for the engine's configuration.
func (e *Engine) Authorize(s Sender, kind string) error { return e.cfg.Authorize(s, kind) }

// Admit spends one token of the sender's rate-limit bucket; the error wraps
// ErrRateLimited when it is empty.
func (e *Engine) Admit(s Sender) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	err := e.limiter.take(s.UID, e.now())
	if err != nil {
		e.stats.RateLimited++
	}
	return err
}

// Stats returns the running counters.
func (e *Engine) Stats() Stats {
	e.mu.Lock()
	defer e.mu.Unlock()
	s := e.stats
	s.Keys, s.Offenders = e.keys.len(), e.offenders.len()
	return s
}

// Handle counts one signal against every rule for its kind and returns the
// decisions of the rules that fired. An invalid signal is an error wrapping
// ErrInvalidSignal and changes nothing. The engine's clock, not the signal's
// Time, places it in windows; a zero Time is set to now.
func (e *Engine) Handle(sig Signal) (Result, error) {
	if err := ValidateSignal(sig); err != nil {
		return Result{}, err
	}
	sig.IP = sig.IP.Unmap().WithZone("")
	sig.Sender.Groups = nil // the cause needs who, not their groups; keeps state small
	e.mu.Lock()
	defer e.mu.Unlock()
	now := e.now()
	if sig.Time.IsZero() {
		sig.Time = now
	}
	e.stats.Signals++
	e.prune(now)
	rules, ok := e.byKind[sig.Kind]
	if !ok {
		rules = e.anyKind
	}
	var res Result
	for _, i := range rules {
		r := &e.rules[i]
		if severities[sig.Severity] < minSeverity(r.MinSeverity) {
			continue
		}
		k, ok := keyOf(i, r, sig)
		if !ok {
			continue
		}
		cause, count, fired := e.count(k, r, sig, now)
		if !fired {
			res.Progress = append(res.Progress, Progress{Rule: r.Name, Key: keyText(r, sig),
				Count: count, Threshold: r.Threshold, Window: r.Window.D()})
			continue
		}
		res.Decisions = append(res.Decisions, e.decide(r, sig, cause, now))
	}
	switch {
	case len(res.Decisions) > 0:
		res.Outcome = OutcomeDecided
		e.stats.Decisions += uint64(len(res.Decisions))
	case len(res.Progress) > 0:
		res.Outcome = OutcomeCounted
	default:
		res.Outcome = OutcomeNoRule
		e.stats.NoRule++
	}
	return res, nil
}

// keyOf returns the counter key of sig under a rule's key, or false when
// sig lacks a part of it. An address counts by the rule's prefix of its
// family (an IPv6 /64 by default): the prefix's first address is the key.
func keyOf(rule int32, r *Rule, sig Signal) (stateKey, bool) {
	k := stateKey{rule: rule}
	key := r.Key
	switch key {
	case KeyIP:
		k.ip = prefixOf(r, sig.IP).Addr()
	case KeyUser:
		k.user = sig.User
	case KeyIPUser:
		k.ip, k.user = prefixOf(r, sig.IP).Addr(), sig.User
	}
	needIP := key == KeyIP || key == KeyIPUser
	needUser := key == KeyUser || key == KeyIPUser
	if (needIP && !sig.IP.IsValid()) || (needUser && sig.User == "") {
		return stateKey{}, false
	}
	return k, true
}

// prefixOf is the prefix of a that rule r counts and blocks per; a
// single address is its /32 or /128.
func prefixOf(r *Rule, a netip.Addr) netip.Prefix {
	if !a.IsValid() {
		return netip.Prefix{}
	}
	p, err := a.Prefix(r.bits(a))
	if err != nil {
		return netip.PrefixFrom(a, a.BitLen())
	}
	return p
}

// ipText is an address as a key shows it: the address, or its prefix.
func ipText(r *Rule, a netip.Addr) string {
	if p := prefixOf(r, a); !p.IsSingleIP() {
		return p.String()
	}
	return a.String()
}

func keyText(r *Rule, sig Signal) string {
	switch r.Key {
	case KeyIP:
		return "ip " + ipText(r, sig.IP)
	case KeyUser:
		return "user " + sig.User
	case KeyIPUser:
		return "ip " + ipText(r, sig.IP) + " user " + sig.User
	}
	return "all"
}

// count adds sig to its key's window. When the threshold is reached it
// forgets the key (the next decision needs a full threshold again) and
// returns the cause.
func (e *Engine) count(k stateKey, r *Rule, sig Signal, now time.Time) ([]Signal, int, bool) {
	if r.Threshold == 1 {
		return []Signal{sig}, 1, true
	}
	n, ok := e.keys.get(k)
	if !ok {
		var evicted int
		n, evicted = e.keys.putRecycled(k)
		e.stats.EvictedKeys += uint64(evicted)
		n.val.times.reset()
		n.val.cause.reset()
	}
	c := &n.val
	cutoff := now.Add(-r.Window.D()).UnixNano()
	for c.times.len() > 0 && c.times.at(0) <= cutoff {
		c.times.popFront()
	}
	c.times.push(now.UnixNano(), r.Threshold)
	c.cause.push(sig, min(r.Threshold, e.cfg.Limits.CauseSignals))
	count := c.times.len()
	if count < r.Threshold {
		return nil, count, false
	}
	cause := make([]Signal, 0, c.cause.len())
	for i := range c.cause.len() {
		if s := c.cause.at(i); s.Time.UnixNano() > cutoff || s.Time.After(now) {
			cause = append(cause, s)
		}
	}
	e.keys.remove(n)
	return cause, count, true
}

// prune drops a few counters whose newest signal has left its rule's
// window, oldest first, so idle state goes without a sweep.
func (e *Engine) prune(now time.Time) {
	for range 4 {
		n, ok := e.keys.oldest()
		if !ok {
			return
		}
		c := &n.val
		w := e.rules[n.key.rule].Window
		if c.times.len() > 0 && c.times.at(c.times.len()-1) > now.Add(-w.D()).UnixNano() {
			return
		}
		e.keys.remove(n)
	}
}

// decide turns a fired rule into its decision.
func (e *Engine) decide(r *Rule, sig Signal, cause []Signal, now time.Time) Decision {
	d := Decision{
		Action: r.Action,
		Source: "policy",
		Rule:   r.Name,
		Sender: sig.Sender.String(),
		Cause:  cause,
		DryRun: e.cfg.DryRun || r.DryRun || r.Action == ActionLog,
	}
	what := fmt.Sprintf("%d %s signal(s) for %s", len(cause), sig.Kind, keyText(r, sig))
	if r.Threshold > 1 {
		what = fmt.Sprintf("%d %s signals for %s within %s", r.Threshold, sig.Kind, keyText(r, sig), r.Window)
	}
	switch r.Action {
	case ActionBlock:
		if e.protected(sig.IP) {
			d.Action = ActionNotify
			d.Reason = fmt.Sprintf("%s: would block %s but it is protected (allowlist, loopback or own address)", what, sig.IP)
			return d
		}
		// The rule's prefix, or the address alone when the prefix holds a
		// protected address (the host's own /64, an allowlisted neighbour).
		target := prefixOf(r, sig.IP)
		if !target.IsSingleIP() && e.protectedIn(target) {
			target = netip.PrefixFrom(sig.IP, sig.IP.BitLen())
		}
		dur, repeat := r.Duration.D(), 0
		if *r.Escalate {
			dur, repeat = e.escalate(target, r.Duration.D(), now, !d.DryRun)
		}
		d.Targets = []netip.Prefix{target}
		d.Until = now.Add(dur)
		d.Reason = fmt.Sprintf("%s: block %s for %s", what, formatTarget(target), dur)
		if repeat > 0 {
			d.Reason += fmt.Sprintf(" (repeat offence %d)", repeat+1)
		}
	case ActionLockdown:
		d.Until = now.Add(r.Duration.D())
		d.Allow = slices.Clone(r.Allow)
		d.Isolate = r.Isolate
		d.Reason = fmt.Sprintf("%s: lock down for %s", what, r.Duration)
	case ActionNotify:
		d.Reason = what
	case ActionLog:
		d.Reason = what + ": log only"
	}
	return d
}

// protectedIn reports whether the prefix p holds a protected address.
func (e *Engine) protectedIn(p netip.Prefix) bool {
	for _, q := range append(e.protect, alwaysProtected...) {
		if q.Overlaps(p) {
			return true
		}
	}
	return false
}

// alwaysProtected are the ranges protected reports by their kind.
var alwaysProtected = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("::1/128"),
	netip.MustParsePrefix("0.0.0.0/32"), netip.MustParsePrefix("::/128"),
	netip.MustParsePrefix("224.0.0.0/4"), netip.MustParsePrefix("ff00::/8")}

// formatTarget is a target as parry prints it: a single address bare.
func formatTarget(p netip.Prefix) string {
	if p.IsSingleIP() {
		return p.Addr().String()
	}
	return p.String()
}

func (e *Engine) protected(ip netip.Addr) bool {
	if ip.IsLoopback() || ip.IsUnspecified() || ip.IsMulticast() {
		return true
	}
	for _, p := range e.protect {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}
