package agent

import (
	"context"
	"log/slog"
	"os"
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

func (p sourcePolicy) Signal(ctx context.Context, sig response.Signal) bool {
	return p.sp.handleSource(ctx, sig)
}

func (p sourcePolicy) Replay(sig response.Signal, at time.Time) {
	if eng := p.sp.engine(); eng != nil {
		sig.Sender = peerSender(sourceSender())
		if err := eng.Replay(sig, at); err != nil {
			p.sp.log.Warn("source: a signal read back was refused", "detector", sig.Source, "err", err)
		}
	}
}

// handleSource runs one signal of a log source through the policy and
// enforces what it decides, as op signal does, with three differences: the
// sender is parryd's own sources (no per-kind authorisation, no sender rate
// limit: the volume is bounded by the logs, and a limit would drop the
// failures that make a block), the decision names the detector and the
// source and quotes the line, and blocks count against the sender block
// cap (SenderCap), since the text is attacker-controlled.
func (sp *policy) handleSource(ctx context.Context, sig response.Signal) bool {
	eng := sp.engine()
	if eng == nil {
		return false
	}
	peer := sourceSender()
	sig.Sender = peerSender(peer)
	if sig.Time.IsZero() {
		sig.Time = sp.now().UTC()
	}
	res, err := eng.Handle(sig)
	if err != nil {
		sp.log.Warn("source: the policy refused a signal", "detector", sig.Source, "err", err)
		return false
	}
	sp.recordSignal(sig, peer, res)
	sp.observeSignal(sig, string(res.Outcome))
	if len(res.Decisions) == 0 {
		return false
	}
	sp.flushSignals() // the cause is in the log before the decision
	blocked := false
	for _, dec := range res.Decisions {
		dec.Source = sourceOf(sig)
		dec.Reason = sourceReason(sig, dec.Reason)
		if _, err := sp.path.EnforceWith(ctx, dec, enforce.EnforceOptions{SenderCap: true}); err != nil {
			sp.log.Warn("source: enforcing a decision failed", "action", dec.Action, "source", dec.Source, "code", api.CodeOf(err), "err", err)
			continue
		}
		blocked = blocked || (dec.Action == response.ActionBlock && !dec.DryRun)
	}
	if blocked {
		sp.saveOffenders()
	}
	return true
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
