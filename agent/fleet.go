package agent

import (
	"context"
	"fmt"
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/parryhq/parry/agent/api"
	"github.com/parryhq/parry/agent/enforce"
	"github.com/parryhq/parry/agent/fleet"
	"github.com/parryhq/parry/response"
)

// The fleet (docs/fleet.md): with a `fleet:` section, every local block and
// unblock is published over NATS JetStream and the fleet's decisions are
// enforced here through the decision path, guard first. Lockdowns stay
// local.

// fleetGlue joins the decision path and the fleet (package agent/fleet
// does the work): it applies the fleet's decisions through the path,
// lists this host's blocks for a resync and publishes local decisions
// (publishToFleet). The fleet is set once joined (atomic; nil: off).
type fleetGlue struct {
	path *enforce.Path
	f    atomic.Pointer[fleet.Fleet]
}

// ApplyRemote enforces a decision from another host through the normal path:
// the guard refuses what the allowlist, loopback and our own addresses
// protect, and Enforce records it in the audit log with its origin. A block
// is applied in partial mode: the fleet merges the targets of one remote
// decision, and a protected one must not keep the others out. It returns
// how many targets the guard refused.
func (g *fleetGlue) ApplyRemote(ctx context.Context, dec response.Decision) (int, error) {
	if dec.Origin == "" {
		return 0, api.Errorf(api.CodeBadRequest, "remote decision without an origin")
	}
	switch dec.Action {
	case response.ActionBlock:
		out, err := g.path.EnforceWith(ctx, dec, enforce.EnforceOptions{Partial: true})
		return len(out.Refused), err
	case response.ActionUnblock:
		_, err := g.path.Enforce(ctx, dec)
		return 0, err
	default:
		return 0, api.Errorf(api.CodeBadRequest, "remote %s refused: only blocks and unblocks travel", dec.Action)
	}
}

// ApplyRemoteBatch is ApplyRemote for many decisions, in order, through
// EnforceBatch: one store commit and one kernel update for a run of them
// (a catch-up, a burst), each still guarded, audited and observed on its own.
func (g *fleetGlue) ApplyRemoteBatch(ctx context.Context, decs []response.Decision) []fleet.Result {
	res := make([]fleet.Result, len(decs))
	ok := make([]response.Decision, 0, len(decs))
	idx := make([]int, 0, len(decs))
	for i, dec := range decs {
		switch {
		case dec.Origin == "":
			res[i].Err = api.Errorf(api.CodeBadRequest, "remote decision without an origin")
		case dec.Action != response.ActionBlock && dec.Action != response.ActionUnblock:
			res[i].Err = api.Errorf(api.CodeBadRequest, "remote %s refused: only blocks and unblocks travel", dec.Action)
		default:
			ok, idx = append(ok, dec), append(idx, i)
		}
	}
	// Partial mode only concerns blocks: a protected target of a merged
	// remote decision must not keep the others out.
	for j, out := range g.path.EnforceBatch(ctx, ok, enforce.EnforceOptions{Partial: true}) {
		res[idx[j]] = fleet.Result{Refused: len(out.Refused), Err: out.Err}
	}
	return res
}

var _ fleet.Applier = (*fleetGlue)(nil)

// publishToFleet is the observer that hands every local block and unblock
// that took effect to the fleet. Remote decisions (Origin set) go nowhere.
func publishToFleet(f *fleet.Fleet) enforce.Observer {
	return func(dec response.Decision, out enforce.Outcome, _ enforce.State) {
		if dec.Origin != "" && dec.Origin != f.Name() {
			return
		}
		if out.Err != nil || dec.DryRun { // refused or failed: nothing changed here
			return
		}
		switch dec.Action {
		case response.ActionBlock:
			if len(out.Applied) == 0 {
				return
			}
			dec.Targets = out.Applied // without the ones the guard refused
		case response.ActionUnblock:
			// Not found here may still be blocked elsewhere: the fleet
			// hears of every target.
		default:
			return
		}
		f.Publish(dec)
	}
}

// localBlocks lists this host's own active blocks, for the fleet's resync.
func (g *fleetGlue) localBlocks(context.Context) ([]response.Decision, error) {
	var out []response.Decision
	for _, b := range g.path.Active() {
		dr := b.Decision
		if dr.Origin != "" {
			continue
		}
		out = append(out, response.Decision{ID: dr.ID, Action: response.ActionBlock, Targets: []netip.Prefix{b.Prefix},
			Reason: dr.Reason, Source: dr.Source, Rule: dr.Rule, Until: b.Until})
	}
	return out, nil
}

// startFleet joins the fleet when configured: it connects, catches up on the
// fleet's active decisions (at most fleet.catchup_timeout, so that a missing
// NATS never holds local protection back) and starts publishing ours.
func (m *Main) startFleet(ctx context.Context, cfg Config) error {
	if !cfg.Fleet.Enabled() {
		return nil
	}
	d := m.Daemon
	f, err := fleet.New(cfg.Fleet, d.fleet, fleet.Options{Logger: m.Logger, Now: d.now, Local: d.fleet.localBlocks})
	if err != nil {
		return fmt.Errorf("fleet: %w", err)
	}
	d.path.Observe(publishToFleet(f))
	if in := d.incident.Load(); in != nil && in.Metrics() != nil {
		if err := in.Metrics().Registry().Register(f); err != nil {
			m.Logger.Warn("fleet metrics not registered", "err", err)
		}
	}
	start := time.Now()
	if err := f.Start(ctx); err != nil {
		return err
	}
	d.fleet.f.Store(f)
	st := f.Status()
	d.Audit("fleet_join", map[string]any{"name": st.Name, "connected": st.Connected, "caught_up": st.CaughtUp,
		"applied": st.Applied, "refused": st.Refused, "took": time.Since(start).Round(time.Millisecond).String()})
	return nil
}

// stopFleet flushes what it can (bounded) and leaves the fleet.
func (m *Main) stopFleet() {
	if m.Daemon == nil || m.Daemon.fleet.f.Load() == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_ = m.Daemon.fleet.f.Load().Close(ctx)
}

// status is the fleet part of op status; nil when the fleet is off.
func (g *fleetGlue) status() *fleet.Status {
	f := g.f.Load()
	if f == nil {
		return nil
	}
	st := f.Status()
	return &st
}
