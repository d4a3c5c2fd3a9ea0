package enforce

import (
	"fmt"
	"slices"

	"github.com/parryhq/parry/agent/api"
	"github.com/parryhq/parry/agent/store"
	"github.com/parryhq/parry/firewall"
	"github.com/parryhq/parry/response"
)

// lockdown is the lockdown state of the decision path: a lockdown is a
// kernel change too, made under the path's lock (dp.mu), which guards cur.
type lockdown struct {
	dp  *Path
	cur *store.Lockdown // the stored lockdown; nil: none (may have expired)
}

// start starts or replaces a lockdown. A lockdown other than an
// admin's (the policy's) is merged into an active one, so that it never
// shortens or loosens it. Caller holds dp.mu.
func (l *lockdown) start(dec response.Decision) (Outcome, error) {
	if !dec.Admin {
		dec = l.merge(dec)
	}
	now := l.dp.now()
	out := Outcome{ID: dec.ID, Action: dec.Action, Until: dec.Until}
	if !dec.Until.After(now) {
		return out, api.Errorf(api.CodeInvalidDuration, "lockdown: needs an end time in the future (a lockdown is never permanent)")
	}
	for _, p := range dec.Allow {
		if !p.IsValid() {
			return out, api.Errorf(api.CodeInvalidTarget, "lockdown: invalid allow entry")
		}
	}
	nl := &store.Lockdown{ID: dec.ID, Since: now.UTC(), Until: dec.Until.UTC(), Allow: dec.Allow, Isolate: dec.Isolate,
		Reason: dec.Reason, Source: dec.Source, Sender: dec.Sender}
	prev := l.cur
	f := decisionFields(dec, out)
	f["isolate"] = dec.Isolate
	if len(dec.Allow) > 0 {
		f["allow"] = targetStrings(dec.Allow)
	}
	events := []auditEvent{{"lockdown", f}}
	ch, undo := store.Change{SetLockdown: nl}, store.Change{ClearLockdown: prev == nil, SetLockdown: prev}
	evs, keys, err := l.dp.rec.stage(&ch, &undo, events)
	if err != nil {
		return out, err
	}
	if err := l.dp.store.Commit(ch); err != nil {
		return out, &api.Error{Code: api.CodeStore, Message: err.Error()}
	}
	if err := l.dp.kernel.Lockdown(firewall.Lockdown{Allow: dec.Allow, Isolate: dec.Isolate, Timeout: dec.Until.Sub(now)}); err != nil {
		if uerr := l.dp.store.Commit(undo); uerr != nil {
			l.dp.log.Error("store undo after firewall failure failed", "err", uerr)
		}
		l.dp.kernelError(err)
		return out, &api.Error{Code: api.CodeFirewall, Message: fmt.Sprintf("firewall: %v", err)}
	}
	if err := l.dp.rec.write(events, evs, keys); err != nil {
		l.restore(prev, undo)
		return out, err
	}
	l.cur = nl
	return out, nil
}

// release ends a lockdown: an admin's decision only. Caller holds dp.mu.
func (l *lockdown) release(dec response.Decision) (Outcome, error) {
	out := Outcome{ID: dec.ID, Action: dec.Action}
	if !dec.Admin {
		return out, api.Errorf(api.CodeForbidden, "release: only an admin ends a lockdown")
	}
	prev := l.cur
	f := decisionFields(dec, out)
	f["was_active"] = prev != nil && prev.Until.After(l.dp.now())
	events := []auditEvent{{"release", f}}
	ch, undo := store.Change{ClearLockdown: true}, store.Change{SetLockdown: prev}
	evs, keys, err := l.dp.rec.stage(&ch, &undo, events)
	if err != nil {
		return out, err
	}
	if err := l.dp.store.Commit(ch); err != nil {
		return out, &api.Error{Code: api.CodeStore, Message: err.Error()}
	}
	if err := l.dp.kernel.Release(); err != nil {
		if uerr := l.dp.store.Commit(undo); uerr != nil {
			l.dp.log.Error("store undo after firewall failure failed", "err", uerr)
		}
		l.dp.kernelError(err)
		return out, &api.Error{Code: api.CodeFirewall, Message: fmt.Sprintf("firewall: %v", err)}
	}
	if err := l.dp.rec.write(events, evs, keys); err != nil {
		l.restore(prev, undo)
		return out, err
	}
	l.cur = nil
	return out, nil
}

// restore puts back the lockdown state prev (nil: none) in the
// kernel and the store after the audit write of a change to it failed.
// Caller holds dp.mu.
func (l *lockdown) restore(prev *store.Lockdown, undo store.Change) {
	var err error
	if now := l.dp.now(); prev != nil && prev.Until.After(now) {
		err = l.dp.kernel.Lockdown(firewall.Lockdown{Allow: prev.Allow, Isolate: prev.Isolate, Timeout: prev.Until.Sub(now)})
	} else {
		err = l.dp.kernel.Release()
	}
	if err != nil {
		l.dp.kernelError(err)
		l.dp.log.Error("kernel undo after audit failure failed; reconcile will re-assert", "err", err)
	}
	if uerr := l.dp.store.Commit(undo); uerr != nil {
		l.dp.log.Error("store undo after audit failure failed", "err", uerr)
	}
}

// state is the lockdown in force. Caller holds dp.mu.
func (l *lockdown) state() api.LockdownState {
	c := l.cur
	if c == nil || !c.Until.After(l.dp.now()) {
		return api.LockdownState{}
	}
	return api.LockdownState{Active: true, ID: c.ID, Since: c.Since, Until: c.Until, Isolate: c.Isolate,
		Allow: targetStrings(c.Allow), Reason: c.Reason}
}

// merge keeps a policy lockdown from shortening or loosening an active
// one (an operator's, typically): it ends no earlier, isolates if either
// does, and keeps the active lockdown's allowlist. Caller holds dp.mu
// (start), so nothing changes between the merge and the lockdown.
func (l *lockdown) merge(dec response.Decision) response.Decision {
	cur := l.state()
	if !cur.Active {
		return dec
	}
	if cur.Until.After(dec.Until) {
		dec.Until = cur.Until
	}
	dec.Isolate = dec.Isolate || cur.Isolate
	dec.Allow = slices.Clone(l.cur.Allow)
	dec.Reason += fmt.Sprintf(" (merged with the active lockdown %s)", cur.ID)
	return dec
}

// reassert puts an active lockdown back into the kernel; false: none is
// active. Caller holds dp.mu.
func (l *lockdown) reassert() (bool, error) {
	if !l.state().Active {
		return false, nil
	}
	c := l.cur
	if err := l.dp.kernel.Lockdown(firewall.Lockdown{Allow: c.Allow, Isolate: c.Isolate, Timeout: c.Until.Sub(l.dp.now())}); err != nil {
		return false, fmt.Errorf("restore lockdown: %w", err)
	}
	return true, nil
}
