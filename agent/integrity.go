package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/parryhq/parry/agent/api"
	"github.com/parryhq/parry/agent/control"
	"github.com/parryhq/parry/integrity"
	"github.com/parryhq/parry/response"
)

// Integrity error codes of the control protocol (docs/integrity.md).
const (
	CodeNoBaseline       = "no_baseline"        // no integrity baseline recorded yet
	CodeBaselineTampered = "baseline_tampered"  // the stored baseline does not match its digest
	CodeIntegrityOff     = "integrity_disabled" // integrity.enabled is false
	CodeBusy             = "busy"               // the part asked is busy (a long scan) or stuck; nothing changed, try again
)

// integrityWait is the longest a request waits for the integrity monitor
// (its lock: a full scan, or a stuck watcher, holds it); it is then
// answered with CodeBusy. Scans themselves are not cut short by it.
const integrityWait = 5 * time.Second

// integrityDigestKey is where the store keeps the digest of the baseline
// last recorded (the same digest goes into the audit chain). A baseline file
// that does not match it is refused.
const integrityDigestKey = "integrity/baseline_digest"

// integrityState is the daemon's integrity monitor. The zero value is ready.
type integrityState struct {
	mu      sync.Mutex
	mon     *integrity.Monitor
	err     error         // why the watcher is not running, if it is not
	restart chan struct{} // poked when a baseline is recorded
	signals chan response.Signal
	dropped int
}

// integrityMonitor returns the monitor, creating it on first use.
func (d *Daemon) integrityMonitor() (*integrity.Monitor, error) {
	s := &d.integ
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.mon != nil {
		return s.mon, nil
	}
	cfg := d.Config()
	want, err := d.store.Get(integrityDigestKey)
	if err != nil {
		return nil, fmt.Errorf("integrity: read baseline digest: %w", err)
	}
	s.restart = make(chan struct{}, 1)
	s.signals = make(chan response.Signal, 1024)
	mon, err := integrity.NewMonitor(cfg.Integrity, integrity.Options{
		StateDir: cfg.StateDir, WantDigest: string(want), Report: d.integrityFinding,
		Logger: d.log.With("component", "integrity"), Now: d.now, LockWait: integrityWait,
	})
	if err != nil {
		return nil, fmt.Errorf("integrity: %w", err)
	}
	s.mon = mon
	return mon, nil
}

func (d *Daemon) setIntegrityErr(err error) {
	d.integ.mu.Lock()
	d.integ.err = err
	d.integ.mu.Unlock()
}

// runIntegrity runs the integrity watcher until ctx ends. On the first
// start it records a baseline; a baseline that fails its digest check is
// reported and not used, and the watcher waits for `parry integrity
// baseline`.
func (d *Daemon) runIntegrity(ctx context.Context) {
	if e := d.Config().Integrity.WithDefaults().Enabled; e != nil && !*e {
		d.setIntegrityErr(errors.New("integrity.enabled is false"))
		return
	}
	mon, err := d.integrityMonitor()
	if err != nil {
		d.log.Error("integrity watcher not started", "err", err)
		d.setIntegrityErr(err)
		return
	}
	go d.integritySignals(ctx)
	_, err = mon.Load()
	switch {
	case errors.Is(err, integrity.ErrNoBaseline):
		d.log.Info("no integrity baseline yet: recording one")
		if _, err = d.recordBaseline(ctx, mon, "first start", "parryd"); err != nil {
			d.log.Error("integrity baseline", "err", err)
		}
	case errors.Is(err, integrity.ErrBaselineTampered):
		d.Audit("integrity_baseline_tampered", map[string]any{"error": err.Error()})
		d.integrityFinding(integrity.Finding{Time: d.now(), Kind: "baseline_tampered", Severity: integrity.SevCritical,
			Path:   filepath.Join(d.Config().StateDir, integrity.BaselineFile),
			Detail: "the integrity baseline does not match its recorded digest; it is not used. Inspect the host, then run `parry integrity baseline`"})
	}
	for {
		if err == nil {
			d.setIntegrityErr(nil)
			err = mon.Run(ctx)
		}
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			d.log.Warn("integrity watcher stopped; retrying in 30s or on a new baseline", "err", err)
			d.setIntegrityErr(err)
		}
		select {
		case <-ctx.Done():
			return
		case <-d.integ.restart:
		case <-time.After(30 * time.Second):
		}
		err = nil
	}
}

// recordBaseline scans and stores a baseline, puts its digest into the
// store and the audit chain, and wakes the watcher.
func (d *Daemon) recordBaseline(ctx context.Context, mon *integrity.Monitor, reason, sender string) (integrity.BaselineResult, error) {
	res, err := mon.Baseline(ctx)
	if err != nil {
		return res, err
	}
	if err := d.noteDigest(res.Digest); err != nil {
		return res, err
	}
	d.Audit("integrity_baseline", map[string]any{"digest": res.Digest, "entries": res.Entries,
		"unreadable": len(res.Unreadable), "reason": reason, "sender": sender, "took": res.Took.String()})
	select {
	case d.integ.restart <- struct{}{}:
	default:
	}
	return res, nil
}

func (d *Daemon) noteDigest(digest string) error {
	if err := d.store.Put(integrityDigestKey, []byte(digest)); err != nil {
		return api.Errorf(api.CodeStore, "integrity: store baseline digest: %v", err)
	}
	return nil
}

// integrityFinding records a finding: audit chain (and structured log) at
// once, and a signal for the policy, handed off so the watcher never waits.
func (d *Daemon) integrityFinding(f integrity.Finding) {
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
	d.Audit("integrity_finding", fields)
	d.observeFinding(f.Signal()) // incident tooling: metrics, webhook, evidence on critical
	select {
	case d.integ.signals <- f.Signal():
	default:
		d.integ.mu.Lock()
		d.integ.dropped++
		d.integ.mu.Unlock()
	}
}

// integritySignals feeds integrity_violation signals to the policy.
func (d *Daemon) integritySignals(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case sig := <-d.integ.signals:
			d.handleIntegritySignal(ctx, sig)
		}
	}
}

// integritySender is how the integrity watcher appears as a signal sender
// and in the audit log.
func integritySender() control.Peer {
	return control.Peer{UID: uint32(os.Getuid()), GID: uint32(os.Getgid()), PID: int32(os.Getpid()), User: "parryd-integrity", Admin: true}
}

// handleIntegritySignal runs one integrity_violation signal through the
// response policy (which may notify, log, block or lock down, as its rules
// for kind integrity_violation say) and enforces what it decides, exactly
// as op signal does for signals from the socket.
func (d *Daemon) handleIntegritySignal(ctx context.Context, sig response.Signal) {
	eng := d.Policy()
	if eng == nil {
		d.log.Warn("integrity_violation signal dropped: no policy engine", "path", sig.Path)
		return
	}
	peer := integritySender()
	sig.Sender = peerSender(peer)
	if sig.Time.IsZero() {
		sig.Time = d.now().UTC()
	}
	if err := response.ValidateSignal(sig); err != nil {
		d.log.Error("integrity_violation signal invalid", "path", sig.Path, "err", err)
		return
	}
	res, err := eng.Handle(sig)
	if err != nil {
		d.log.Error("policy refused an integrity_violation signal", "path", sig.Path, "err", err)
		return
	}
	d.recordSignal(sig, peer, res)
	d.observeSignal(sig, string(res.Outcome))
	blocked := false
	for _, dec := range res.Decisions {
		if _, err := d.path.Enforce(ctx, dec); err != nil {
			d.log.Error("enforcing the policy's answer to an integrity finding failed", "action", dec.Action, "path", sig.Path, "err", err)
			continue
		}
		blocked = blocked || (dec.Action == response.ActionBlock && !dec.DryRun)
	}
	if blocked {
		d.saveOffenders()
	}
}

// IntegrityStatus is the answer to op integrity_status.
type IntegrityStatus struct {
	integrity.Status
	Enabled        bool   `json:"enabled"`
	Error          string `json:"not_watching,omitempty"` // why the watcher is not running ("error" is the protocol's)
	DroppedSignals int    `json:"dropped_signals,omitempty"`
}

func (d *Daemon) opIntegrityStatus(ctx context.Context, c *control.Call) (any, error) {
	if err := c.Decode(&struct{}{}); err != nil {
		return nil, err
	}
	mon, err := d.integrityMonitor()
	if err != nil {
		return nil, api.Errorf(api.CodeInternal, "%v", err)
	}
	ms, err := mon.Status(ctx)
	if err != nil {
		return nil, integrityErr(err)
	}
	st := IntegrityStatus{Status: ms, Enabled: true}
	if e := d.Config().Integrity.WithDefaults().Enabled; e != nil {
		st.Enabled = *e
	}
	d.integ.mu.Lock()
	if d.integ.err != nil {
		st.Error = d.integ.err.Error()
	}
	st.DroppedSignals = d.integ.dropped
	d.integ.mu.Unlock()
	return st, nil
}

func (d *Daemon) opIntegrityBaseline(ctx context.Context, c *control.Call) (any, error) {
	if err := c.Decode(&struct{}{}); err != nil {
		return nil, err
	}
	mon, err := d.integrityMonitor()
	if err != nil {
		return nil, api.Errorf(api.CodeInternal, "%v", err)
	}
	res, err := d.recordBaseline(ctx, mon, "requested", c.Peer.String())
	if err != nil {
		return nil, integrityErr(err)
	}
	return res, nil
}

func (d *Daemon) opIntegrityCheck(ctx context.Context, c *control.Call) (any, error) {
	if err := c.Decode(&struct{}{}); err != nil {
		return nil, err
	}
	mon, err := d.integrityMonitor()
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

func (d *Daemon) opIntegrityAccept(ctx context.Context, c *control.Call) (any, error) {
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
	mon, err := d.integrityMonitor()
	if err != nil {
		return nil, api.Errorf(api.CodeInternal, "%v", err)
	}
	digest, err := mon.Accept(ctx, p.Paths)
	if err != nil {
		return nil, integrityErr(err)
	}
	if err := d.noteDigest(digest); err != nil {
		return nil, err
	}
	d.Audit("integrity_accept", map[string]any{"paths": p.Paths, "digest": digest, "sender": c.Peer.String()})
	return map[string]any{"digest": digest, "accepted": p.Paths}, nil
}

func integrityErr(err error) error {
	switch {
	case errors.Is(err, integrity.ErrNoBaseline):
		return api.Errorf(CodeNoBaseline, "%v", err)
	case errors.Is(err, integrity.ErrBaselineTampered):
		return api.Errorf(CodeBaselineTampered, "%v: inspect the host, then run `parry integrity baseline`", err)
	case errors.Is(err, integrity.ErrBusy):
		return api.Errorf(CodeBusy, "%v", err)
	}
	var pe *api.Error
	if errors.As(err, &pe) {
		return pe
	}
	return api.Errorf(api.CodeBadRequest, "%v", err)
}
