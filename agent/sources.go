package agent

import (
	"cmp"
	"context"
	"log/slog"
	"os"
	"slices"
	"strconv"
	"time"

	"github.com/parryhq/parry/agent/api"
	"github.com/parryhq/parry/agent/control"
	"github.com/parryhq/parry/agent/enforce"
	"github.com/parryhq/parry/agent/sources"
	"github.com/parryhq/parry/agent/store"
	"github.com/parryhq/parry/response"
)

// sourcesGlue is the log sources part (agent/sources does the work): the
// running sources with their counters and positions, feeding the policy.
type sourcesGlue struct {
	m *sources.Manager
}

func newSourcesGlue(cfg sources.Config, sp *policy, st *store.Store, log *slog.Logger, now func() time.Time) (*sourcesGlue, error) {
	m, err := sources.New(cfg, sources.Options{Handler: sourcePolicy{sp}, Store: st, Now: now, Logger: log,
		Window: func() time.Duration {
			if eng := sp.engine(); eng != nil {
				return eng.LongestWindow()
			}
			return 0
		},
		Observe: func(source, detector, result string) {
			if sp.observeSource != nil {
				sp.observeSource(source, detector, result)
			}
		},
	})
	if err != nil {
		return nil, err
	}
	return &sourcesGlue{m: m}, nil
}

// runSources runs the log sources until ctx ends; their positions are
// saved when it returns.
func (d *Daemon) runSources(ctx context.Context) {
	if in := d.incident.Load(); in != nil && in.metrics != nil {
		for _, st := range d.sources.m.Status() {
			in.metrics.SourceStarted(st.Name, d.now())
		}
	}
	d.sources.m.Run(ctx)
}

func (g *sourcesGlue) register(s *control.Server) {
	s.Handle("source_status", control.PermAdmin, g.opStatus)
}

func (g *sourcesGlue) opStatus(context.Context, *control.Call) (any, error) {
	return api.SourcesStatus{Sources: g.m.Status()}, nil
}

// summary is the sources' part of op status (nil: none configured).
func (g *sourcesGlue) summary() *api.SourcesSummary {
	if g == nil || len(g.m.Status()) == 0 {
		return nil
	}
	return g.m.Summary()
}

// sourceSender is how the log sources appear as a signal sender and in the
// audit log. It is not an admin: the text it acts on is the attackers', so
// its blocks count against response.sender_block_cap (docs/sources.md).
func sourceSender() control.Peer {
	return control.Peer{UID: uint32(os.Getuid()), GID: uint32(os.Getgid()), PID: int32(os.Getpid()), User: "parryd-sources"}
}

// sourcePolicy is the policy as agent/sources sees it.
type sourcePolicy struct{ sp *policy }

func (p sourcePolicy) Signal(sig response.Signal) []response.Decision { return p.sp.handleSource(sig) }

func (p sourcePolicy) Enforce(ctx context.Context, decs []response.Decision) {
	p.sp.enforceSource(ctx, decs)
}

func (p sourcePolicy) Replay(sig response.Signal, at time.Time) {
	if eng := p.sp.engine(); eng != nil {
		sig.Sender = peerSender(sourceSender())
		if err := eng.Replay(sig, at); err != nil {
			p.sp.log.Warn("source: a signal read back was refused", "detector", sig.Source, "err", err)
		}
	}
}

// handleSource runs one signal of a log source through the policy, as op
// signal does, with three differences: the sender is parryd's own sources
// (no per-kind authorisation, no sender rate limit: the volume is bounded
// by the logs, and a limit would drop the failures that make a block), the
// decisions name the detector and the source and quote the line, and they
// are enforced by enforceSource, in batches, against the sender block cap.
func (sp *policy) handleSource(sig response.Signal) []response.Decision {
	eng := sp.engine()
	if eng == nil {
		return nil
	}
	peer := sourceSender()
	sig.Sender = peerSender(peer)
	if sig.Time.IsZero() {
		sig.Time = sp.now().UTC()
	}
	res, err := eng.Handle(sig)
	if err != nil {
		sp.log.Warn("source: the policy refused a signal", "detector", sig.Source, "err", err)
		return nil
	}
	sp.recordSignal(sig, peer, res)
	sp.observeSignal(sig, string(res.Outcome))
	for i := range res.Decisions {
		res.Decisions[i].Source = sourceOf(sig)
		res.Decisions[i].Reason = sourceReason(sig, res.Decisions[i].Reason)
	}
	return res.Decisions
}

// enforceSource enforces the log sources' decisions as one batch (one
// store commit), counting their blocks against the sender block cap
// (SenderCap), since the text they come from is attacker-controlled.
func (sp *policy) enforceSource(ctx context.Context, decs []response.Decision) {
	sp.flushSignals() // the causes are in the log before the decisions
	// Blocks first, in their order, then the rest (notify, log): a
	// notify between two blocks would end the batch's run of blocks, and
	// one store commit would become many. They are independent of each
	// other; only blocks of one address must keep their order, and do.
	slices.SortStableFunc(decs, func(a, b response.Decision) int {
		return cmp.Compare(actionOrder(a), actionOrder(b))
	})
	blocked := false
	for i, o := range sp.path.EnforceBatch(ctx, decs, enforce.EnforceOptions{SenderCap: true}) {
		if o.Err != nil {
			sp.log.Warn("source: enforcing a decision failed", "action", decs[i].Action, "source", decs[i].Source, "code", api.CodeOf(o.Err), "err", o.Err)
			continue
		}
		blocked = blocked || (decs[i].Action == response.ActionBlock && !decs[i].DryRun && len(o.Applied) > 0)
	}
	if blocked {
		sp.saveOffenders()
	}
}

func actionOrder(d response.Decision) int {
	if d.Action == response.ActionBlock && !d.DryRun {
		return 0
	}
	return 1
}

// sourceOf is a decision's source: the detector and the log source,
// "sshd@journal".
func sourceOf(sig response.Signal) string {
	return sig.Attrs["detector"] + "@" + sig.Attrs["source"]
}

// sourceReason says why in the detector's words: "sshd: 5 auth_failure
// signals for ip 203.0.113.9 within 15m: block 203.0.113.9 for 1h
// (journal ssh.service; last: "Failed password for root from ...")". The
// line is quoted with its control characters escaped.
func sourceReason(sig response.Signal, reason string) string {
	where := sig.Attrs["source"]
	if u := sig.Attrs["unit"]; u != "" {
		where += " " + u
	} else if id := sig.Attrs["identifier"]; id != "" {
		where += " " + id
	} else if p := sig.Attrs["path"]; p != "" && p != where {
		where += " " + p
	}
	line := sig.Detail
	if len(line) > 200 {
		line = line[:200] + "..."
	}
	return sig.Attrs["detector"] + ": " + reason + " (" + where + "; last: " + strconv.QuoteToGraphic(line) + ")"
}
