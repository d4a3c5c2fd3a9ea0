package agent

import (
	"context"
	"errors"
	"net/netip"
	"strconv"
	"time"

	"github.com/parryhq/parry/agent/api"
	"github.com/parryhq/parry/agent/control"
	"github.com/parryhq/parry/agent/enforce"
	"github.com/parryhq/parry/response"
)

// Signals of other tools that already decided (fail2ban's action,
// docs/policy.md "Other tools' decisions").
const (
	// KindUnbanRequested lifts what the sender's own ban_requested of the
	// same source caused, and nothing another cause holds.
	KindUnbanRequested = "unban_requested"
	// AttrDuration is the attr of a ban_requested signal carrying the
	// requester's duration (seconds, or a duration like "10m").
	AttrDuration = "duration"
)

// requested applies what a signal's sender asked for to a decision the
// policy made of it: the decision's source is the signal's (the fail2ban
// jail, the web app), not "policy"; and a ban_requested signal's duration
// attr sets the block's length, within escalation.max (a requester that
// escalates, as fail2ban's bantime.increment does, says so in the
// duration it sends).
func requested(dec *response.Decision, sig response.Signal, cfg response.Config, now time.Time) {
	if sig.Source != "" {
		dec.Source = sig.Source
	}
	if sig.Kind != "ban_requested" || dec.Action != response.ActionBlock || dec.DryRun || len(dec.Targets) == 0 {
		return
	}
	d, ok := parseRequestedDuration(sig.Attrs[AttrDuration])
	if !ok {
		return
	}
	if m := cfg.Escalation.Max.D(); m > 0 && d > m {
		d = m
	}
	dec.Until = now.Add(d)
	dec.Reason = "ban requested by " + orDefault(sig.Source, "a sender") + " for " + api.FormatDuration(d)
	if sig.Detail != "" {
		dec.Reason += ": " + truncate(sig.Detail, 256)
	}
}

// parseRequestedDuration reads fail2ban's bantime (seconds) or a duration;
// zero, negative (fail2ban's -1: permanent) or unreadable is not ok, and
// the policy's duration applies.
func parseRequestedDuration(s string) (time.Duration, bool) {
	if s == "" {
		return 0, false
	}
	if n, err := strconv.ParseInt(s, 10, 64); err == nil {
		if n <= 0 || n > int64(10*365*24*time.Hour/time.Second) {
			return 0, false
		}
		return time.Duration(n) * time.Second, true
	}
	d, err := api.ParseDuration(s)
	if err != nil || d < time.Second {
		return 0, false
	}
	return d, true
}

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// unbanRequested lifts the block of sig.IP if the sender's own
// ban_requested of the same source made it (enforce.EnforceOptions.Lift):
// a block an admin, the log sources, another jail or another sender made,
// or one they hold now, stays.
func (sp *policy) unbanRequested(ctx context.Context, sig response.Signal, peer control.Peer) (any, error) {
	if !sig.IP.IsValid() || sig.Source == "" {
		return nil, api.Errorf(CodeInvalidSignal, "signal %s: needs ip and source (the source of the ban_requested to lift)", KindUnbanRequested)
	}
	sender := sig.Sender.String()
	dec := response.Decision{Action: response.ActionUnblock, Targets: []netip.Prefix{netip.PrefixFrom(sig.IP, sig.IP.BitLen())},
		Source: sig.Source, Sender: sender, Reason: "unban requested by " + sig.Source}
	sp.recordSignal(sig, peer, response.Result{Outcome: response.OutcomeDecided})
	sp.observeSignal(sig, string(response.OutcomeDecided))
	sp.flushSignals()
	sd := SignalDecision{Decision: dec}
	o, err := sp.path.EnforceWith(ctx, dec, enforce.EnforceOptions{Lift: &enforce.Requester{Source: sig.Source, Sender: sender}})
	if err != nil {
		var e *api.Error
		if !errors.As(err, &e) {
			e = &api.Error{Code: api.CodeInternal, Message: err.Error()}
		}
		sd.Error = e
	} else {
		sd.Enforced = &o
		sd.ID = o.ID
	}
	return SignalResult{Outcome: response.OutcomeDecided, Decisions: []SignalDecision{sd}}, nil
}
