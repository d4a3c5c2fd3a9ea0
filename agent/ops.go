package agent

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"github.com/parryhq/parry/agent/api"
	"github.com/parryhq/parry/agent/audit"
	"github.com/parryhq/parry/agent/control"
	"github.com/parryhq/parry/agent/enforce"
	"github.com/parryhq/parry/response"
)

// registerOps is the daemon's part of the op table: one line per op, the
// handler in the file of the part it asks (the incident tooling adds its
// own in incident_ops.go).
func (d *Daemon) registerOps() {
	d.server.Handle("ping", control.PermAnyone, d.opPing)
	d.server.HandleParams("signal", control.PermAnyone, d.policy.opSignal) // per-kind authorisation inside
	d.server.Handle("status", control.PermAdmin, d.opStatus)
	d.server.HandleParams("list", control.PermAdmin, d.opList)
	d.server.HandleParams("why", control.PermAdmin, d.opWhy)
	d.server.HandleParams("block", control.PermAdmin, d.opBlock)
	d.server.HandleParams("unblock", control.PermAdmin, d.opUnblock)
	d.server.HandleParams("lockdown", control.PermAdmin, d.opLockdown)
	d.server.HandleParams("release", control.PermAdmin, d.opRelease)
	d.server.Handle("audit_verify", control.PermAdmin, d.opAuditVerify)
	d.server.Handle("audit_ack", control.PermAdmin, d.opAuditAck)
	d.server.Handle("reload", control.PermAdmin, d.opReload)
	d.server.Handle("uninstall_rules", control.PermAdmin, d.opUninstallRules)
	d.server.HandleParams("events", control.PermAdmin, d.opEvents) // a stream (events_ops.go)
	d.integ.register(d.server)
	d.feeds.register(d.server)
	d.sources.register(d.server)
}

func (d *Daemon) opPing(context.Context, *control.Call) (any, error) {
	return map[string]any{"pong": true, "version": Version}, nil
}

func (d *Daemon) auditFailure() *api.AuditFailure {
	f := d.audit.Failure()
	if f == nil {
		return nil
	}
	return &api.AuditFailure{Since: f.Since, Op: f.Op, Error: f.Error, Count: f.Count}
}

// Status reports the daemon's state from memory (never the kernel).
//
// It asks each part for its own state, one after the other: none holds
// another's lock. The decision path is waited for at most its LockWait
// (busy) or until ctx ends.
func (d *Daemon) Status(ctx context.Context) (api.Status, error) {
	now := d.now()
	cfg := d.Config()
	ps, err := d.path.Stats(ctx)
	if err != nil {
		return api.Status{}, err
	}
	return api.Status{Version: Version, PID: os.Getpid(), Started: d.started.UTC(), Uptime: api.FormatDuration(now.Sub(d.started).Truncate(time.Second)),
		ActiveBlocks: ps.Active, Table: "inet " + cfg.Table, TableHealth: d.heal.Health(), Lockdown: ps.Lockdown,
		StateDir: cfg.StateDir, AuditSeq: d.audit.Seq(), AuditBreak: d.AuditBreak(), AuditFailure: d.auditFailure(), Policy: d.policy.status(), Fleet: d.fleet.status(),
		Sources: d.sources.summary()}, nil
}

func (d *Daemon) opStatus(ctx context.Context, _ *control.Call) (any, error) { return d.Status(ctx) }

func (d *Daemon) opList(ctx context.Context, c *control.Call) (any, error) {
	q, err := d.listQuery(c)
	if err != nil {
		return nil, err
	}
	var b []api.BlockInfo
	if q.Empty() {
		b, err = d.path.Blocks(ctx)
	} else {
		b, err = d.path.Query(ctx, q)
	}
	if err != nil {
		return nil, err
	}
	d.geo.annotate(b)
	return map[string]any{"count": len(b), "blocks": b}, nil
}

func (d *Daemon) opBlock(ctx context.Context, c *control.Call) (any, error) {
	var p blockParams
	if err := c.Decode(&p); err != nil {
		return nil, err
	}
	cfg := d.Config()
	if p.Country != "" || p.ASN != "" {
		return d.blockGeo(ctx, c, p, &cfg)
	}
	targets, bad, err := parseTargets(p.Targets, p.Partial)
	if err != nil {
		return nil, err
	}
	until, err := p.until(d.now(), &cfg)
	if err != nil {
		return nil, err
	}
	if p.Source == "" {
		p.Source = "control"
	}
	dec := response.Decision{Action: response.ActionBlock, Targets: targets, Until: until,
		Reason: truncate(p.Reason, 1024), Source: truncate(p.Source, 64), Sender: c.Peer.String(), Admin: true}
	if len(targets) == 0 { // every target was unparseable (partial mode)
		return enforce.Outcome{Action: response.ActionBlock, Refused: bad}, nil
	}
	out, err := d.path.EnforceWith(ctx, dec, enforce.EnforceOptions{Partial: p.Partial})
	if err != nil {
		return nil, err
	}
	out.Refused = append(bad, out.Refused...)
	return out, nil
}

func (d *Daemon) opUnblock(ctx context.Context, c *control.Call) (any, error) {
	var p struct {
		Targets []string `json:"targets"`
		Reason  string   `json:"reason"`
		Source  string   `json:"source"`
	}
	if err := c.Decode(&p); err != nil {
		return nil, err
	}
	targets, _, err := parseTargets(p.Targets, false)
	if err != nil {
		return nil, err
	}
	if p.Source == "" {
		p.Source = "control"
	}
	return d.path.Enforce(ctx, response.Decision{Action: response.ActionUnblock, Targets: targets,
		Reason: truncate(p.Reason, 1024), Source: truncate(p.Source, 64), Sender: c.Peer.String(), Admin: true})
}

func (d *Daemon) opRelease(ctx context.Context, c *control.Call) (any, error) {
	var p struct {
		Reason string `json:"reason"`
	}
	if err := c.Decode(&p); err != nil {
		return nil, err
	}
	return d.path.Enforce(ctx, response.Decision{Action: response.ActionRelease, Reason: truncate(p.Reason, 1024),
		Source: "control", Sender: c.Peer.String(), Admin: true})
}

func (d *Daemon) opAuditVerify(context.Context, *control.Call) (any, error) {
	res, err := d.verifyAudit()
	if err != nil {
		return nil, err
	}
	if brk := d.AuditBreak(); brk != nil {
		return map[string]any{"audit": res, "chain_break": brk}, nil
	}
	return map[string]any{"audit": res}, nil
}

func chainBreakReason(b *api.ChainBreak) string {
	kept := "the old log was missing"
	if b.KeptAs != "" {
		kept = "the old log is kept as " + b.KeptAs
	}
	return fmt.Sprintf("chain broken across a restart at %s: parryd had written up to seq %d, but the old log fails at line %d (%d intact lines before it): %s; %s and a new chain started (review it, then run `parry audit ack`)",
		b.Time.Format(time.RFC3339), b.AnchorSeq, b.FoundAtLine, b.FoundLines, b.Found, kept)
}

// verifyAudit syncs the audit log and verifies the file's chain, and that
// the file still ends with (or goes past) the last line this daemon wrote:
// a deleted log, a cut-off end or a rewritten file are reported, not OK;
// so is an unacknowledged chain break found at start.
func (d *Daemon) verifyAudit() (audit.Result, error) {
	if err := d.audit.Sync(); err != nil {
		return audit.Result{}, err
	}
	seq, hash := d.audit.Last()
	res, err := audit.VerifyFileAgainst(filepath.Join(d.Config().StateDir, "audit.log"), seq, hash)
	// The current file may be intact, but the chain before it was not:
	// the verdict stays broken until an admin acknowledges the break.
	if brk := d.AuditBreak(); err == nil && res.OK && brk != nil {
		res.OK, res.FirstBad = false, 1
		res.Reason = chainBreakReason(brk)
	}
	return res, err
}

func (d *Daemon) opReload(context.Context, *control.Call) (any, error) {
	if d.reload == nil {
		return nil, api.Errorf(api.CodeInternal, "reload is not wired in this daemon")
	}
	res, err := d.reload()
	if err != nil {
		return nil, api.Errorf(api.CodeBadRequest, "reload refused, old config kept: %v", err)
	}
	return res, nil
}

func (d *Daemon) opUninstallRules(_ context.Context, c *control.Call) (any, error) {
	if err := d.heal.Uninstall(); err != nil {
		return nil, api.Errorf(api.CodeFirewall, "remove table: %v", err)
	}
	d.Audit("uninstall_rules", map[string]any{"table": d.Config().Table, "sender": c.Peer.String()})
	if d.shutdown != nil {
		d.shutdown() // else self-heal would put the table back
	}
	return map[string]any{"removed": "inet " + d.Config().Table, "daemon": "stopping"}, nil
}

func targetStrings(ps []netip.Prefix) []string {
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = api.FormatTarget(p)
	}
	return s
}
