package agent

import (
	"fmt"

	"github.com/parryhq/parry/agent/api"
	"github.com/parryhq/parry/agent/store"
	"github.com/parryhq/parry/firewall"
	"github.com/parryhq/parry/response"
)

// startLockdown starts or replaces a lockdown. A lockdown other than an
// admin's (the policy's) is merged into an active one, so that it never
// shortens or loosens it. Caller holds d.mu.
func (d *Daemon) startLockdown(dec response.Decision) (Outcome, error) {
	if !dec.Admin {
		dec = d.mergeLockdown(dec)
	}
	now := d.now()
	out := Outcome{ID: dec.ID, Action: dec.Action, Until: dec.Until}
	if !dec.Until.After(now) {
		return out, api.Errorf(api.CodeInvalidDuration, "lockdown: needs an end time in the future (a lockdown is never permanent)")
	}
	for _, p := range dec.Allow {
		if !p.IsValid() {
			return out, api.Errorf(api.CodeInvalidTarget, "lockdown: invalid allow entry")
		}
	}
	l := &store.Lockdown{ID: dec.ID, Since: now.UTC(), Until: dec.Until.UTC(), Allow: dec.Allow, Isolate: dec.Isolate,
		Reason: dec.Reason, Source: dec.Source, Sender: dec.Sender}
	prev := d.lockdown
	f := decisionFields(dec, out)
	f["isolate"] = dec.Isolate
	if len(dec.Allow) > 0 {
		f["allow"] = targetStrings(dec.Allow)
	}
	events := []auditEvent{{"lockdown", f}}
	ch, undo := store.Change{SetLockdown: l}, store.Change{ClearLockdown: prev == nil, SetLockdown: prev}
	evs, keys, err := d.stageAudit(&ch, &undo, events)
	if err != nil {
		return out, err
	}
	if err := d.store.Commit(ch); err != nil {
		return out, &api.Error{Code: api.CodeStore, Message: err.Error()}
	}
	if err := d.fw.Lockdown(firewall.Lockdown{Allow: dec.Allow, Isolate: dec.Isolate, Timeout: dec.Until.Sub(now)}); err != nil {
		if uerr := d.store.Commit(undo); uerr != nil {
			d.log.Error("store undo after firewall failure failed", "err", uerr)
		}
		d.noteFirewallError(err)
		return out, &api.Error{Code: api.CodeFirewall, Message: fmt.Sprintf("firewall: %v", err)}
	}
	if err := d.writeAudit(events, evs, keys); err != nil {
		d.restoreLockdown(prev, undo)
		return out, err
	}
	d.lockdown = l
	return out, nil
}

// release ends a lockdown: an admin's decision only. Caller holds d.mu.
func (d *Daemon) release(dec response.Decision) (Outcome, error) {
	out := Outcome{ID: dec.ID, Action: dec.Action}
	if !dec.Admin {
		return out, api.Errorf(api.CodeForbidden, "release: only an admin ends a lockdown")
	}
	prev := d.lockdown
	f := decisionFields(dec, out)
	f["was_active"] = prev != nil && prev.Until.After(d.now())
	events := []auditEvent{{"release", f}}
	ch, undo := store.Change{ClearLockdown: true}, store.Change{SetLockdown: prev}
	evs, keys, err := d.stageAudit(&ch, &undo, events)
	if err != nil {
		return out, err
	}
	if err := d.store.Commit(ch); err != nil {
		return out, &api.Error{Code: api.CodeStore, Message: err.Error()}
	}
	if err := d.fw.Release(); err != nil {
		if uerr := d.store.Commit(undo); uerr != nil {
			d.log.Error("store undo after firewall failure failed", "err", uerr)
		}
		d.noteFirewallError(err)
		return out, &api.Error{Code: api.CodeFirewall, Message: fmt.Sprintf("firewall: %v", err)}
	}
	if err := d.writeAudit(events, evs, keys); err != nil {
		d.restoreLockdown(prev, undo)
		return out, err
	}
	d.lockdown = nil
	return out, nil
}

// restoreLockdown puts back the lockdown state prev (nil: none) in the
// kernel and the store after the audit write of a change to it failed.
// Caller holds d.mu.
func (d *Daemon) restoreLockdown(prev *store.Lockdown, undo store.Change) {
	var err error
	if now := d.now(); prev != nil && prev.Until.After(now) {
		err = d.fw.Lockdown(firewall.Lockdown{Allow: prev.Allow, Isolate: prev.Isolate, Timeout: prev.Until.Sub(now)})
	} else {
		err = d.fw.Release()
	}
	if err != nil {
		d.noteFirewallError(err)
		d.log.Error("kernel undo after audit failure failed; reconcile will re-assert", "err", err)
	}
	if uerr := d.store.Commit(undo); uerr != nil {
		d.log.Error("store undo after audit failure failed", "err", uerr)
	}
}

func (d *Daemon) lockdownState() api.LockdownState {
	l := d.lockdown
	if l == nil || !l.Until.After(d.now()) {
		return api.LockdownState{}
	}
	return api.LockdownState{Active: true, ID: l.ID, Since: l.Since, Until: l.Until, Isolate: l.Isolate,
		Allow: targetStrings(l.Allow), Reason: l.Reason}
}
