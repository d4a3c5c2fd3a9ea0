package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"sync"
	"time"

	"github.com/parryhq/parry/agent/api"
	"github.com/parryhq/parry/agent/control"
	"github.com/parryhq/parry/agent/store"
	"github.com/parryhq/parry/integrity"
	"github.com/parryhq/parry/response"
)

// Integrity error codes of the control protocol (docs/integrity.md).
const (
	CodeNoBaseline       = "no_baseline"        // no integrity baseline recorded yet
	CodeBaselineTampered = "baseline_tampered"  // the stored baseline does not match its digest
	CodeIntegrityOff     = "integrity_disabled" // integrity.enabled is false
)

// integrityWait is the longest a request waits for the integrity monitor
// (its lock: a full scan, or a stuck watcher, holds it); it is then
// answered with api.CodeBusy. Scans themselves are not cut short by it.
const integrityWait = 5 * time.Second

// integrityDigestKey is where the store keeps the digest of the baseline
// last recorded (the same digest goes into the audit chain). A baseline file
// that does not match it is refused.
const integrityDigestKey = "integrity/baseline_digest"

// integrityGlue is the integrity part of the daemon: the monitor (created
// on first use), its watcher loop, its findings into the audit log, the
// incident tooling (observe) and the policy (handle), and the integrity
// ops. mu guards mon, err, restart, signals and dropped.
type integrityGlue struct {
	log     *slog.Logger
	now     func() time.Time
	store   *store.Store
	audit   func(event string, fields map[string]any) error
	config  func() Config
	observe func(response.Signal)                  // the incident tooling hears of every finding
	handle  func(context.Context, response.Signal) // the policy, as for op signal

	mu      sync.Mutex
	mon     *integrity.Monitor
	err     error         // why the watcher is not running, if it is not
	restart chan struct{} // poked when a baseline is recorded
	signals chan response.Signal
	dropped int
}

// monitor returns the monitor, creating it on first use.
func (g *integrityGlue) monitor() (*integrity.Monitor, error) {
	s := g
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.mon != nil {
		return s.mon, nil
	}
	cfg := g.config()
	want, err := g.store.Get(integrityDigestKey)
	if err != nil {
		return nil, fmt.Errorf("integrity: read baseline digest: %w", err)
	}
	s.restart = make(chan struct{}, 1)
	s.signals = make(chan response.Signal, 1024)
	mon, err := integrity.NewMonitor(cfg.Integrity, integrity.Options{
		StateDir: cfg.StateDir, WantDigest: string(want), Report: g.finding,
		Logger: g.log.With("component", "integrity"), Now: g.now, LockWait: integrityWait,
	})
	if err != nil {
		return nil, fmt.Errorf("integrity: %w", err)
	}
	s.mon = mon
	return mon, nil
}

func (g *integrityGlue) setErr(err error) {
	g.mu.Lock()
	g.err = err
	g.mu.Unlock()
}

// run runs the integrity watcher until ctx ends. On the first
// start it records a baseline; a baseline that fails its digest check is
// reported and not used, and the watcher waits for `parry integrity
// baseline`.
func (g *integrityGlue) run(ctx context.Context) {
	if e := g.config().Integrity.WithDefaults().Enabled; e != nil && !*e {
		g.setErr(errors.New("integrity.enabled is false"))
		return
	}
	mon, err := g.monitor()
	if err != nil {
		g.log.Error("integrity watcher not started", "err", err)
		g.setErr(err)
		return
	}
	go g.feed(ctx)
	_, err = mon.Load()
	switch {
	case errors.Is(err, integrity.ErrNoBaseline):
		g.log.Info("no integrity baseline yet: recording one")
		if _, err = g.recordBaseline(ctx, mon, "first start", "parryd"); err != nil {
			g.log.Error("integrity baseline", "err", err)
		}
	case errors.Is(err, integrity.ErrBaselineTampered):
		g.audit("integrity_baseline_tampered", map[string]any{"error": err.Error()})
		g.finding(integrity.Finding{Time: g.now(), Kind: "baseline_tampered", Severity: integrity.SevCritical,
			Path:   filepath.Join(g.config().StateDir, integrity.BaselineFile),
			Detail: "the integrity baseline does not match its recorded digest; it is not used. Inspect the host, then run `parry integrity baseline`"})
	}
	for {
		if err == nil {
			g.setErr(nil)
			err = mon.Run(ctx)
		}
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			g.log.Warn("integrity watcher stopped; retrying in 30s or on a new baseline", "err", err)
			g.setErr(err)
		}
		select {
		case <-ctx.Done():
			return
		case <-g.restart:
		case <-time.After(30 * time.Second):
		}
		err = nil
	}
}

// recordBaseline scans and stores a baseline, puts its digest into the
// store and the audit chain, and wakes the watcher.
func (g *integrityGlue) recordBaseline(ctx context.Context, mon *integrity.Monitor, reason, sender string) (integrity.BaselineResult, error) {
	res, err := mon.Baseline(ctx)
	if err != nil {
		return res, err
	}
	if err := g.noteDigest(res.Digest); err != nil {
		return res, err
	}
	g.audit("integrity_baseline", map[string]any{"digest": res.Digest, "entries": res.Entries,
		"unreadable": len(res.Unreadable), "reason": reason, "sender": sender, "took": res.Took.String()})
	select {
	case g.restart <- struct{}{}:
	default:
	}
	return res, nil
}

func (g *integrityGlue) noteDigest(digest string) error {
	if err := g.store.Put(integrityDigestKey, []byte(digest)); err != nil {
		return api.Errorf(api.CodeStore, "integrity: store baseline digest: %v", err)
	}
	return nil
}

// finding records a finding: audit chain (and structured log) at
// once, and a signal for the policy, handed off so the watcher never waits.
func (g *integrityGlue) finding(f integrity.Finding) {
	fields := map[string]any{"kind": f.Kind, "severity": f.Severity, "path": f.Path, "detail": f.Detail}
	for k, v := range map[string]string{"rule": f.Rule, "package": f.Package, "remediation": f.Remediation} {
		if v != "" {
			fields[k] = v
		}
	}
	if len(f.Changes) > 0 {
		fields["changes"] = f.Changes
	}
	if f.Count > 0 {
		fields["count"] = f.Count // a burst finding: files aggregated
	}
	if f.Actor != nil {
		fields["actor"] = f.Actor // who changed it (integrity.attribution)
	}
	if len(f.Diff) > 0 {
		fields["diff"] = f.Diff
		if f.DiffOmitted > 0 {
			fields["diff_omitted"] = f.DiffOmitted
		}
	}
	if f.ContentNote != "" {
		fields["content_note"] = f.ContentNote // secret or binary: no content shown
	}
	g.audit("integrity_finding", fields)
	g.observe(f.Signal()) // incident tooling: metrics, webhook, evidence on critical
	select {
	case g.signals <- f.Signal():
	default:
		g.mu.Lock()
		g.dropped++
		g.mu.Unlock()
	}
}

// feed hands integrity_violation signals to the policy, off the watcher's
// goroutine.
func (g *integrityGlue) feed(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case sig := <-g.signals:
			g.handle(ctx, sig)
		}
	}
}

// IntegrityStatus is the answer to op integrity_status.
type IntegrityStatus struct {
	integrity.Status
	Enabled        bool   `json:"enabled"`
	Error          string `json:"not_watching,omitempty"` // why the watcher is not running ("error" is the protocol's)
	DroppedSignals int    `json:"dropped_signals,omitempty"`
}

func (g *integrityGlue) opStatus(ctx context.Context, c *control.Call) (any, error) {
	if err := c.Decode(&struct{}{}); err != nil {
		return nil, err
	}
	mon, err := g.monitor()
	if err != nil {
		return nil, api.Errorf(api.CodeInternal, "%v", err)
	}
	ms, err := mon.Status(ctx)
	if err != nil {
		return nil, integrityErr(err)
	}
	st := IntegrityStatus{Status: ms, Enabled: true}
	if e := g.config().Integrity.WithDefaults().Enabled; e != nil {
		st.Enabled = *e
	}
	g.mu.Lock()
	if g.err != nil {
		st.Error = g.err.Error()
	}
	st.DroppedSignals = g.dropped
	g.mu.Unlock()
	return st, nil
}

func (g *integrityGlue) opBaseline(ctx context.Context, c *control.Call) (any, error) {
	if err := c.Decode(&struct{}{}); err != nil {
		return nil, err
	}
	mon, err := g.monitor()
	if err != nil {
		return nil, api.Errorf(api.CodeInternal, "%v", err)
	}
	res, err := g.recordBaseline(ctx, mon, "requested", c.Peer.String())
	if err != nil {
		return nil, integrityErr(err)
	}
	return res, nil
}

func (g *integrityGlue) opCheck(ctx context.Context, c *control.Call) (any, error) {
	if err := c.Decode(&struct{}{}); err != nil {
		return nil, err
	}
	mon, err := g.monitor()
	if err != nil {
		return nil, api.Errorf(api.CodeInternal, "%v", err)
	}
	start := time.Now()
	fs, err := mon.Check(ctx)
	if err != nil {
		return nil, integrityErr(err)
	}
	return map[string]any{"clean": len(fs) == 0, "findings": fs, "took_ns": time.Since(start)}, nil
}

const maxAcceptPaths = 4096

func (g *integrityGlue) opAccept(ctx context.Context, c *control.Call) (any, error) {
	var p struct {
		Paths []string `json:"paths"`
	}
	if err := c.Decode(&p); err != nil {
		return nil, err
	}
	if len(p.Paths) == 0 || len(p.Paths) > maxAcceptPaths {
		return nil, api.Errorf(api.CodeBadRequest, "accept needs 1 to %d paths", maxAcceptPaths)
	}
	for _, path := range p.Paths {
		if len(path) > 4096 || !filepath.IsAbs(path) || filepath.Clean(path) != path {
			return nil, api.Errorf(api.CodeBadRequest, "accept %q: want an absolute, clean path", truncate(path, 256))
		}
	}
	mon, err := g.monitor()
	if err != nil {
		return nil, api.Errorf(api.CodeInternal, "%v", err)
	}
	digest, err := mon.Accept(ctx, p.Paths)
	if err != nil {
		return nil, integrityErr(err)
	}
	if err := g.noteDigest(digest); err != nil {
		return nil, err
	}
	g.audit("integrity_accept", map[string]any{"paths": p.Paths, "digest": digest, "sender": c.Peer.String()})
	return map[string]any{"digest": digest, "accepted": p.Paths}, nil
}

func integrityErr(err error) error {
	switch {
	case errors.Is(err, integrity.ErrNoBaseline):
		return api.Errorf(CodeNoBaseline, "%v", err)
	case errors.Is(err, integrity.ErrBaselineTampered):
		return api.Errorf(CodeBaselineTampered, "%v: inspect the host, then run `parry integrity baseline`", err)
	case errors.Is(err, integrity.ErrBusy):
		return api.Errorf(api.CodeBusy, "%v", err)
	}
	var pe *api.Error
	if errors.As(err, &pe) {
		return pe
	}
	return api.Errorf(api.CodeBadRequest, "%v", err)
}

// register adds the integrity ops to the control server.
func (g *integrityGlue) register(s *control.Server) {
	s.Handle("integrity_status", control.PermAdmin, g.opStatus)
	s.Handle("integrity_baseline", control.PermAdmin, g.opBaseline)
	s.Handle("integrity_check", control.PermAdmin, g.opCheck)
	s.HandleParams("integrity_accept", control.PermAdmin, g.opAccept)
}

// openFindings are the monitor's unresolved findings, when it runs (false:
// it does not), waiting for it at most integrityWait.
func (g *integrityGlue) openFindings(ctx context.Context) ([]integrity.Finding, bool, error) {
	g.mu.Lock()
	mon := g.mon
	g.mu.Unlock()
	if mon == nil {
		return nil, false, nil
	}
	ctx, cancel := context.WithTimeout(ctx, integrityWait)
	defer cancel()
	st, err := mon.Status(ctx)
	if err != nil {
		return nil, false, err
	}
	return st.Open, true, nil
}
