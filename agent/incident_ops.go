package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/parryhq/parry/agent/api"
	"github.com/parryhq/parry/agent/audit"
	"github.com/parryhq/parry/agent/control"
	"github.com/parryhq/parry/agent/evidence"
	"github.com/parryhq/parry/agent/hostcheck"
	"github.com/parryhq/parry/agent/report"
)

// CodeNotFound: the named evidence does not exist.
const CodeNotFound = "not_found"

// registerOps adds the incident ops to the daemon's registry. Called by
// AttachIncident before the socket is served.
func (in *Incident) registerOps() {
	in.d.server.HandleParams("evidence_capture", control.PermAdmin, in.opCapture)
	in.d.server.Handle("evidence_list", control.PermAdmin, in.opEvidenceList)
	in.d.server.HandleParams("evidence_show", control.PermAdmin, in.opEvidenceShow)
	in.d.server.HandleParams("report", control.PermAdmin, in.opReport)
	in.d.server.Handle("check", control.PermAdmin, in.opCheck)
}

func (in *Incident) opCapture(ctx context.Context, c *control.Call) (any, error) {
	var p struct {
		Reason string `json:"reason"`
	}
	if err := c.Decode(&p); err != nil {
		return nil, err
	}
	if p.Reason == "" {
		return nil, api.Errorf(api.CodeBadRequest, `evidence_capture needs a "reason" (what happened; it is kept with the snapshot)`)
	}
	rec, err := in.Capture(ctx, truncate(p.Reason, 1024), "cli")
	if err != nil {
		return nil, api.Errorf(api.CodeInternal, "capture evidence: %v", err)
	}
	return map[string]any{"evidence": rec}, nil
}

// recordedHashes reads the evidence hashes from the audit log.
func (in *Incident) recordedHashes() (map[string]string, error) {
	if err := in.d.audit.Sync(); err != nil {
		return nil, err
	}
	f, err := audit.OpenAll(filepath.Join(in.config().StateDir, "audit.log"))
	if errors.Is(err, os.ErrNotExist) {
		return map[string]string{}, nil
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return report.EvidenceHashes(f)
}

func info(r evidence.Record, recorded map[string]string) api.EvidenceInfo {
	ei := api.EvidenceInfo{EvidenceRecord: r, Recorded: recorded[r.ID]}
	ei.Intact = ei.Recorded != "" && ei.Recorded == r.SHA256 && r.Mode == "0400"
	return ei
}

func (in *Incident) opEvidenceList(_ context.Context, c *control.Call) (any, error) {
	if err := c.Decode(&struct{}{}); err != nil {
		return nil, err
	}
	recs, err := in.evidence.List()
	if err != nil {
		return nil, api.Errorf(api.CodeInternal, "%v", err)
	}
	recorded, err := in.recordedHashes()
	if err != nil {
		return nil, api.Errorf(api.CodeInternal, "read audit log: %v", err)
	}
	out := make([]api.EvidenceInfo, 0, len(recs))
	for _, r := range recs {
		out = append(out, info(r, recorded))
	}
	return map[string]any{"count": len(out), "evidence": out}, nil
}

func (in *Incident) opEvidenceShow(_ context.Context, c *control.Call) (any, error) {
	var p struct {
		ID string `json:"evidence_id"`
	}
	if err := c.Decode(&p); err != nil {
		return nil, err
	}
	snap, rec, err := in.evidence.Show(p.ID)
	switch {
	case errors.Is(err, evidence.ErrBadID):
		return nil, api.Errorf(api.CodeBadRequest, "%v", err)
	case errors.Is(err, evidence.ErrNotFound):
		return nil, api.Errorf(CodeNotFound, "no evidence %q; see parry evidence list", p.ID)
	case err != nil:
		return nil, api.Errorf(api.CodeInternal, "%v", err)
	}
	recorded, err := in.recordedHashes()
	if err != nil {
		return nil, api.Errorf(api.CodeInternal, "read audit log: %v", err)
	}
	return map[string]any{"info": info(rec, recorded), "snapshot": snap}, nil
}

func (in *Incident) opReport(_ context.Context, c *control.Call) (any, error) {
	var p struct {
		Since string `json:"since"`
	}
	if err := c.Decode(&p); err != nil {
		return nil, err
	}
	if p.Since == "" {
		p.Since = "24h"
	}
	since, err := api.ParseDuration(p.Since)
	if err != nil || since <= 0 {
		return nil, api.Errorf(api.CodeInvalidDuration, `report: "since" must be a duration like 24h or 7d`)
	}
	rep, err := in.Report(since)
	if err != nil {
		return nil, api.Errorf(api.CodeInternal, "%v", err)
	}
	return map[string]any{"report": rep}, nil
}

// Report summarises the audit log of the last `since`, with the chain
// verified.
func (in *Incident) Report(since time.Duration) (report.Report, error) {
	path := filepath.Join(in.config().StateDir, "audit.log")
	res, err := in.d.verifyAudit()
	if err != nil {
		return report.Report{}, err
	}
	chain := report.Chain{Checked: true, OK: res.OK, Lines: res.Lines, FirstBad: res.FirstBad, Reason: res.Reason}
	to := in.d.now()
	from := to.Add(-since)
	f, err := audit.OpenSince(path, from)
	if errors.Is(err, os.ErrNotExist) {
		return report.Build(report.Lines{}, chain, in.host, from, to), nil
	}
	if err != nil {
		return report.Report{}, fmt.Errorf("report: %w", err)
	}
	defer f.Close()
	rep, err := report.Summarize(f, chain, in.host, from, to.Add(time.Second))
	if err == nil {
		in.d.geo.annotateSources(rep.Sources)
	}
	return rep, err
}

func (in *Incident) opCheck(ctx context.Context, c *control.Call) (any, error) {
	if err := c.Decode(&struct{}{}); err != nil {
		return nil, err
	}
	return map[string]any{"check": in.Check(ctx)}, nil
}

// Check runs the host posture check with parry's own paths; the table
// state comes from the daemon's last presence check (memory, not a kernel
// walk).
func (in *Incident) Check(ctx context.Context) hostcheck.Report {
	ch := &hostcheck.Checker{Config: in.config().Check, Now: in.d.now, ConfigPath: in.configPath,
		StateDir: in.config().StateDir, SocketPath: in.config().Socket, Table: "inet " + in.config().Table,
		TablePresent: func() (bool, error) { return in.d.heal.Health().Present, nil }}
	return ch.Run(ctx)
}
