package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"github.com/parryhq/parry/response"
)

// Protocol codes of op signal (docs/protocol.md).
const (
	CodeInvalidSignal = "invalid_signal" // a field of the signal is malformed
)

// offendersKey is where the policy's escalation memory lives in the
// store's key/value space.
const offendersKey = "response/offenders"

// newPolicy builds the policy engine for cfg. It protects the allowlist and
// the host's own addresses, and takes over the escalation memory of old, or
// when old is nil, of the store.
func (d *Daemon) newPolicy(cfg Config, own []netip.Addr, old *response.Engine) (*response.Engine, error) {
	protect := slices.Clone(cfg.AllowPrefixes())
	for _, a := range own {
		protect = append(protect, netip.PrefixFrom(a, a.BitLen()))
	}
	eng, err := response.New(cfg.Response, response.Options{Now: d.now, Protect: protect})
	if err != nil {
		return nil, fmt.Errorf("policy: %w", err)
	}
	if old != nil {
		eng.Restore(old.Snapshot())
		return eng, nil
	}
	b, err := d.store.Get(offendersKey)
	if err != nil {
		return nil, fmt.Errorf("policy: read escalation memory: %w", err)
	}
	if len(b) > 0 {
		var saved []response.Offender
		if err := json.Unmarshal(b, &saved); err != nil {
			d.log.Warn("policy: escalation memory unreadable; starting empty", "err", err)
		} else {
			d.log.Info("policy: escalation memory restored", "offenders", eng.Restore(saved))
		}
	}
	return eng, nil
}

// Policy returns the policy engine in force.
func (d *Daemon) Policy() *response.Engine { return d.policy.Load() }

// saveOffenders persists the escalation memory (after a policy block).
func (d *Daemon) saveOffenders(eng *response.Engine) {
	b, err := json.Marshal(eng.Snapshot())
	if err == nil {
		err = d.store.Put(offendersKey, b)
	}
	if err != nil {
		d.log.Error("policy: saving escalation memory failed", "err", err)
	}
}

// signalParams are the parameters of op "signal".
type signalParams struct {
	Kind     string            `json:"kind"`
	IP       string            `json:"ip"`
	User     string            `json:"user"`
	Source   string            `json:"source"`
	Severity string            `json:"severity"`
	Detail   string            `json:"detail"`
	Path     string            `json:"path"`
	Attrs    map[string]string `json:"attrs"`
}

// SignalResult is the answer to op signal: what the policy made of the
// signal, and for each decision what enforcing it did.
type SignalResult struct {
	Outcome   response.Outcome    `json:"outcome"`
	Progress  []response.Progress `json:"progress,omitempty"`
	Decisions []SignalDecision    `json:"decisions,omitempty"`
}

// SignalDecision is one decision and its enforcement.
type SignalDecision struct {
	response.Decision
	Enforced *Outcome `json:"enforced,omitempty"` // what Enforce did
	Error    *Error   `json:"error,omitempty"`    // why Enforce refused it
}

// peerSender is the policy's view of a control peer.
func peerSender(p Peer) response.Sender {
	return response.Sender{UID: p.UID, GID: p.GID, PID: p.PID, User: p.User, Groups: p.Groups}
}

// opSignal: authorise the sender for the kind, rate-limit it, run the
// policy, record the signal, and enforce what the policy decided.
func (d *Daemon) opSignal(ctx context.Context, c *Call) (any, error) {
	var p signalParams
	if err := c.Decode(&p); err != nil {
		return nil, err
	}
	sig := response.Signal{Kind: p.Kind, User: p.User, Source: p.Source, Severity: p.Severity,
		Detail: p.Detail, Path: p.Path, Attrs: p.Attrs, Time: d.now().UTC(), Sender: peerSender(c.Peer)}
	if p.IP != "" {
		a, err := netip.ParseAddr(p.IP)
		if err != nil {
			return nil, errorf(CodeInvalidSignal, "signal ip: %q is not an IPv4 or IPv6 address", truncate(p.IP, 64))
		}
		sig.IP = a
	}
	if err := response.ValidateSignal(sig); err != nil {
		return nil, errorf(CodeInvalidSignal, "%v", err)
	}
	eng := d.Policy()
	if !c.Peer.Admin {
		if err := eng.Authorize(sig.Sender, sig.Kind); err != nil {
			d.Audit("refuse", map[string]any{"op": "signal", "kind": sig.Kind, "code": CodeForbidden, "sender": c.Peer.String()})
			d.observeSignal(sig, "forbidden")
			return nil, errorf(CodeForbidden, "%v", err)
		}
	}
	if err := eng.Admit(sig.Sender); err != nil {
		d.observeSignal(sig, "rate_limited")
		return nil, errorf(CodeRateLimited, "%v; slow down", err)
	}
	res, err := eng.Handle(sig)
	if err != nil {
		return nil, errorf(CodeInvalidSignal, "%v", err)
	}
	d.recordSignal(sig, c.Peer, res)
	d.observeSignal(sig, string(res.Outcome))
	out := SignalResult{Outcome: res.Outcome, Progress: res.Progress}
	blocked := false
	for _, dec := range res.Decisions {
		sd := SignalDecision{Decision: dec}
		o, err := d.Enforce(ctx, dec)
		if err != nil {
			var e *Error
			if !errors.As(err, &e) {
				e = &Error{Code: CodeInternal, Message: err.Error()}
			}
			sd.Error = e
		} else {
			sd.Enforced = &o
			sd.ID = o.ID
			blocked = blocked || (dec.Action == response.ActionBlock && !dec.DryRun)
		}
		sd.Cause = nil // the audit log and the store have it; keep the answer short
		out.Decisions = append(out.Decisions, sd)
	}
	if blocked {
		d.saveOffenders(eng)
	}
	return out, nil
}

// recordSignal appends the signal and what became of it to the audit log.
// It goes to the audit chain only, not the journal: signals can arrive by
// the thousand per second; the decisions they lead to are journalled.
func (d *Daemon) recordSignal(sig response.Signal, peer Peer, res response.Result) {
	f := map[string]any{"kind": sig.Kind, "sender": peer.String(), "outcome": string(res.Outcome)}
	add := func(k, v string) {
		if v != "" {
			f[k] = v
		}
	}
	if sig.IP.IsValid() {
		f["ip"] = sig.IP.String()
	}
	add("user", sig.User)
	add("source", sig.Source)
	add("severity", sig.Severity)
	add("path", sig.Path)
	add("detail", sig.Detail)
	if len(sig.Attrs) > 0 {
		f["attrs"] = sig.Attrs
	}
	if err := d.audit.Append("signal", f); err != nil {
		d.log.Error("audit append failed", "event", "signal", "err", err)
	}
}
