package agent

import (
	"fmt"

	"github.com/parryhq/parry/agent/store"
	"github.com/parryhq/parry/firewall"
	"github.com/parryhq/parry/response"
)

// startLockdown starts or replaces a lockdown. Caller holds d.mu.
func (d *Daemon) startLockdown(dec response.Decision) (Outcome, error) {
	now := d.now()
	out := Outcome{ID: dec.ID, Action: dec.Action, Until: dec.Until}
	if !dec.Until.After(now) {
		return out, errorf(CodeInvalidDuration, "lockdown: needs an end time in the future (a lockdown is never permanent)")
	}
	for _, p := range dec.Allow {
		if !p.IsValid() {
			return out, errorf(CodeInvalidTarget, "lockdown: invalid allow entry")
		}
	}
	l := &store.Lockdown{ID: dec.ID, Since: now.UTC(), Until: dec.Until.UTC(), Allow: dec.Allow, Isolate: dec.Isolate,
		Reason: dec.Reason, Source: dec.Source, Sender: dec.Sender}
	prev := d.lockdown
	if err := d.store.Commit(store.Change{SetLockdown: l}); err != nil {
		return out, &Error{Code: CodeStore, Message: err.Error()}
	}
	if err := d.fw.Lockdown(firewall.Lockdown{Allow: dec.Allow, Isolate: dec.Isolate, Timeout: dec.Until.Sub(now)}); err != nil {
		undo := store.Change{ClearLockdown: prev == nil, SetLockdown: prev}
		if uerr := d.store.Commit(undo); uerr != nil {
			d.log.Error("store undo after firewall failure failed", "err", uerr)
		}
		d.noteFirewallError(err)
		return out, &Error{Code: CodeFirewall, Message: fmt.Sprintf("firewall: %v", err)}
	}
	d.lockdown = l
	f := decisionFields(dec, out)
	f["isolate"] = dec.Isolate
	if len(dec.Allow) > 0 {
		f["allow"] = targetStrings(dec.Allow)
	}
	d.Audit("lockdown", f)
	return out, nil
}

// release ends a lockdown. Caller holds d.mu.
func (d *Daemon) release(dec response.Decision) (Outcome, error) {
	out := Outcome{ID: dec.ID, Action: dec.Action}
	prev := d.lockdown
	if err := d.store.Commit(store.Change{ClearLockdown: true}); err != nil {
		return out, &Error{Code: CodeStore, Message: err.Error()}
	}
	if err := d.fw.Release(); err != nil {
		if prev != nil {
			if uerr := d.store.Commit(store.Change{SetLockdown: prev}); uerr != nil {
				d.log.Error("store undo after firewall failure failed", "err", uerr)
			}
		}
		d.noteFirewallError(err)
		return out, &Error{Code: CodeFirewall, Message: fmt.Sprintf("firewall: %v", err)}
	}
	d.lockdown = nil
	f := decisionFields(dec, out)
	f["was_active"] = prev != nil && prev.Until.After(d.now())
	d.Audit("release", f)
	return out, nil
}

func (d *Daemon) lockdownState() LockdownState {
	l := d.lockdown
	if l == nil || !l.Until.After(d.now()) {
		return LockdownState{}
	}
	return LockdownState{Active: true, ID: l.ID, Since: l.Since, Until: l.Until, Isolate: l.Isolate,
		Allow: targetStrings(l.Allow), Reason: l.Reason}
}
