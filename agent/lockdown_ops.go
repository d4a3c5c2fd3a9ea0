package agent

import (
	"cmp"
	"context"
	"net/netip"
	"slices"
	"time"

	"github.com/parryhq/parry/agent/api"
	"github.com/parryhq/parry/agent/control"
	"github.com/parryhq/parry/agent/enforce"
	"github.com/parryhq/parry/response"
)

// Lockdown limits (docs/policy.md).
const (
	DefaultLockdown = 15 * time.Minute   // "for" when neither "for" nor "extend" is given
	MaxLockdown     = 7 * 24 * time.Hour // longest lockdown, extensions included
	CodeNeedsForce  = "needs_force"      // a lockdown that would leave no allowlist needs "force"
	CodeNoLockdown  = "no_lockdown"      // "extend" without an active lockdown
)

// lockdownParams are the parameters of op "lockdown".
type lockdownParams struct {
	For     string   `json:"for"`     // duration; default 15m
	Extend  string   `json:"extend"`  // push the active lockdown's end by this much
	Allow   []string `json:"allow"`   // extra allowlist for this lockdown
	Isolate bool     `json:"isolate"` // drop outbound too, except to the allowlist
	Reason  string   `json:"reason"`
	Force   bool     `json:"force"` // allow a lockdown with an empty allowlist
}

// LockdownResult is the answer to op lockdown.
type LockdownResult struct {
	enforce.Outcome
	Lockdown api.LockdownState `json:"lockdown"`
}

// opLockdown starts, replaces or extends a lockdown. The resulting
// allowlist (configured plus "allow", plus the extended lockdown's) must not
// be empty unless "force": a lockdown with nothing allowed cuts off every
// new connection, the operator's next SSH session included.
func (d *Daemon) opLockdown(ctx context.Context, c *control.Call) (any, error) {
	var p lockdownParams
	if err := c.Decode(&p); err != nil {
		return nil, err
	}
	if p.For != "" && p.Extend != "" {
		return nil, api.Errorf(api.CodeBadRequest, `give either "for" (a new lockdown) or "extend" (the active one), not both`)
	}
	dec := response.Decision{Action: response.ActionLockdown, Isolate: p.Isolate,
		Reason: truncate(p.Reason, 1024), Source: "control", Sender: c.Peer.String(), Admin: true}
	for i, s := range p.Allow {
		pr, err := api.ParseTarget(s)
		if err != nil {
			return nil, api.Errorf(api.CodeInvalidTarget, "allow[%d]: %v", i, err)
		}
		if pr.Bits() == 0 {
			// "10.0.0.0/0" for "10.0.0.0/8" would make the lockdown a no-op.
			return nil, api.Errorf(api.CodeInvalidTarget, "allow[%d]: %s lets every address in: the lockdown would do nothing (a typo for a longer prefix?)", i, api.FormatTarget(pr))
		}
		dec.Allow = append(dec.Allow, pr)
	}
	now := d.now()
	cfg := d.Config()
	if err := d.lockdownEnd(ctx, &dec, p, now); err != nil {
		return nil, err
	}
	if dec.Until.Sub(now) > MaxLockdown {
		return nil, api.Errorf(api.CodeInvalidDuration, "a lockdown may last at most %s from now; extend it later if needed", api.FormatDuration(MaxLockdown))
	}
	slices.SortFunc(dec.Allow, comparePrefix)
	dec.Allow = slices.Compact(dec.Allow)
	if len(cfg.AllowPrefixes())+len(dec.Allow) == 0 && !p.Force {
		return nil, api.Errorf(CodeNeedsForce, "the lockdown would have an empty allowlist: nothing could reach this host, your current session included; give --allow CIDR (your management network) or --force")
	}
	out, err := d.path.Enforce(ctx, dec)
	if err != nil {
		return nil, err
	}
	st, err := d.path.Stats(ctx)
	if err != nil {
		return nil, err
	}
	return LockdownResult{Outcome: out, Lockdown: st.Lockdown}, nil
}

func comparePrefix(a, b netip.Prefix) int {
	if c := a.Addr().Compare(b.Addr()); c != 0 {
		return c
	}
	return cmp.Compare(a.Bits(), b.Bits())
}

// lockdownEnd sets the end of a new lockdown ("for", default 15m), or of
// the active one extended ("extend"), which keeps its allowlist, isolation
// and reason unless given anew.
func (d *Daemon) lockdownEnd(ctx context.Context, dec *response.Decision, p lockdownParams, now time.Time) error {
	if p.Extend == "" {
		dur := DefaultLockdown
		if p.For != "" {
			var err error
			dur, err = api.ParseDuration(p.For)
			if err != nil || dur < time.Second {
				return api.Errorf(api.CodeInvalidDuration, `"for" must be a duration of at least 1s, e.g. "15m"; a lockdown is never permanent`)
			}
		}
		dec.Until = now.Add(dur)
		return nil
	}
	by, err := api.ParseDuration(p.Extend)
	if err != nil || by < time.Second {
		return api.Errorf(api.CodeInvalidDuration, `"extend" must be a duration of at least 1s, e.g. "15m"`)
	}
	l, err := d.path.CurrentLockdown(ctx)
	if err != nil {
		return err
	}
	if l == nil || !l.Until.After(now) {
		return api.Errorf(CodeNoLockdown, "no active lockdown to extend; start one with --for")
	}
	dec.Until = l.Until.Add(by)
	dec.Allow = append(slices.Clone(l.Allow), dec.Allow...)
	dec.Isolate = dec.Isolate || l.Isolate
	if dec.Reason == "" {
		dec.Reason = l.Reason
	}
	return nil
}
