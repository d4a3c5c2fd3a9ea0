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
	"github.com/parryhq/parry/agent/enforce"
	"github.com/parryhq/parry/response"
)

// Perm decides whether a peer may use an op.
type Perm func(d *Daemon, p Peer) bool

// PermAnyone lets every peer that can open the socket use the op.
func PermAnyone(*Daemon, Peer) bool { return true }

// PermAdmin allows root and members of control.admin_groups.
func PermAdmin(_ *Daemon, p Peer) bool { return p.Admin }

// Handler runs one op. Its result is marshalled as a JSON object whose
// fields join "ok" and "id" at the top level of the response; an error with
// a code (*Error) becomes {"ok":false,"error":{...}}.
type Handler func(ctx context.Context, c *Call) (any, error)

type opEntry struct {
	perm   Perm
	fn     Handler
	params bool // false: any member besides "op" and "id" is bad_request, refused before fn runs
}

// handle registers an op that takes no parameters: the server refuses a
// request for it that carries any member besides "op" and "id"
// (bad_request) before the handler runs. Other parts add theirs with one
// line in registerOps, the handler in their own file.
func (d *Daemon) handle(name string, perm Perm, fn Handler) {
	d.register(name, opEntry{perm: perm, fn: fn})
}

// handleParams registers an op that takes parameters; its handler must
// decode them with Call.Decode (strict: unknown fields are bad_request)
// before it changes anything.
func (d *Daemon) handleParams(name string, perm Perm, fn Handler) {
	d.register(name, opEntry{perm: perm, fn: fn, params: true})
}

func (d *Daemon) register(name string, e opEntry) {
	if d.ops == nil {
		d.ops = map[string]opEntry{}
	}
	if _, dup := d.ops[name]; dup {
		panic("agent: op registered twice: " + name)
	}
	d.ops[name] = e
}

// registerOps is the op registry: one line per op.
func (d *Daemon) registerOps() {
	d.handle("ping", PermAnyone, d.opPing)
	d.handleParams("signal", PermAnyone, d.opSignal) // per-kind authorisation inside
	d.handle("status", PermAdmin, d.opStatus)
	d.handle("list", PermAdmin, d.opList)
	d.handleParams("block", PermAdmin, d.opBlock)
	d.handleParams("unblock", PermAdmin, d.opUnblock)
	d.handleParams("lockdown", PermAdmin, d.opLockdown)
	d.handleParams("release", PermAdmin, d.opRelease)
	d.handle("audit_verify", PermAdmin, d.opAuditVerify)
	d.handle("audit_ack", PermAdmin, d.opAuditAck)
	d.handle("reload", PermAdmin, d.opReload)
	d.handle("uninstall_rules", PermAdmin, d.opUninstallRules)
	d.handle("integrity_status", PermAdmin, d.opIntegrityStatus)
	d.handle("integrity_baseline", PermAdmin, d.opIntegrityBaseline)
	d.handle("integrity_check", PermAdmin, d.opIntegrityCheck)
	d.handleParams("integrity_accept", PermAdmin, d.opIntegrityAccept)
}

func (d *Daemon) opPing(context.Context, *Call) (any, error) {
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
// another's lock.
func (d *Daemon) Status() api.Status {
	now := d.now()
	cfg := d.Config()
	ps := d.path.Stats()
	return api.Status{Version: Version, PID: os.Getpid(), Started: d.started.UTC(), Uptime: api.FormatDuration(now.Sub(d.started).Truncate(time.Second)),
		ActiveBlocks: ps.Active, Table: "inet " + cfg.Table, TableHealth: d.heal.Health(), Lockdown: ps.Lockdown,
		StateDir: cfg.StateDir, AuditSeq: d.audit.Seq(), AuditBreak: d.AuditBreak(), AuditFailure: d.auditFailure(), Policy: d.policyStatus(), Fleet: d.fleetStatus()}
}

func (d *Daemon) opStatus(context.Context, *Call) (any, error) { return d.Status(), nil }

func (d *Daemon) opList(context.Context, *Call) (any, error) {
	b := d.path.Blocks()
	return map[string]any{"count": len(b), "blocks": b}, nil
}

func (d *Daemon) opBlock(ctx context.Context, c *Call) (any, error) {
	var p blockParams
	if err := c.Decode(&p); err != nil {
		return nil, err
	}
	targets, bad, err := parseTargets(p.Targets, p.Partial)
	if err != nil {
		return nil, err
	}
	cfg := d.Config()
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

func (d *Daemon) opUnblock(ctx context.Context, c *Call) (any, error) {
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

func (d *Daemon) opRelease(ctx context.Context, c *Call) (any, error) {
	var p struct {
		Reason string `json:"reason"`
	}
	if err := c.Decode(&p); err != nil {
		return nil, err
	}
	return d.path.Enforce(ctx, response.Decision{Action: response.ActionRelease, Reason: truncate(p.Reason, 1024),
		Source: "control", Sender: c.Peer.String(), Admin: true})
}

func (d *Daemon) opAuditVerify(context.Context, *Call) (any, error) {
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

func (d *Daemon) opReload(context.Context, *Call) (any, error) {
	if d.reload == nil {
		return nil, api.Errorf(api.CodeInternal, "reload is not wired in this daemon")
	}
	if err := d.reload(); err != nil {
		return nil, api.Errorf(api.CodeBadRequest, "reload refused, old config kept: %v", err)
	}
	return nil, nil
}

func (d *Daemon) opUninstallRules(_ context.Context, c *Call) (any, error) {
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
