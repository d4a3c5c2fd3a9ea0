package response

import (
	"slices"
	"time"
)

// Replay counts a signal that was already handled once, before a restart,
// at the time it was seen: a log source reading back the longest window
// (LongestWindow) to rebuild the counters a restart lost. It decides
// nothing and records no offence: when a rule's threshold is reached, the
// key is forgotten, as it was when that rule's decision was made the first
// time. A signal older than a rule's window is not counted by that rule; a
// time in the future is taken as now. The rate limit does not apply.
func (e *Engine) Replay(sig Signal, at time.Time) error {
	if err := ValidateSignal(sig); err != nil {
		return err
	}
	sig.IP = sig.IP.Unmap().WithZone("")
	sig.Sender.Groups = nil
	e.mu.Lock()
	defer e.mu.Unlock()
	now := e.now()
	if at.IsZero() || at.After(now) {
		at = now
	}
	if sig.Time.IsZero() {
		sig.Time = at
	}
	rules, ok := e.byKind[sig.Kind]
	if !ok {
		rules = e.anyKind
	}
	for _, i := range rules {
		r := &e.rules[i]
		if r.Threshold <= 1 || now.Sub(at) >= r.Window.D() || severities[sig.Severity] < minSeverity(r.MinSeverity) {
			continue
		}
		if k, ok := keyOf(i, r, sig); ok {
			e.count(k, r, sig, at)
		}
	}
	return nil
}

// LongestWindow is the longest counting window of the rules in force for
// any of kinds (every rule when kinds is empty): how far back a log source
// reads on start so that an attack in progress is counted whole.
func (e *Engine) LongestWindow(kinds ...string) time.Duration {
	var w time.Duration
	for _, r := range e.rules {
		if r.Threshold <= 1 {
			continue
		}
		if len(kinds) > 0 && r.Kind != "*" && !slices.Contains(kinds, r.Kind) {
			continue
		}
		w = max(w, r.Window.D())
	}
	return w
}
