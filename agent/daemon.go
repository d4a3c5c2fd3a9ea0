// Package agent is the parry daemon: config, the control socket and its
// protocol, peer authentication, the store, the audit log, reconcile and
// self-heal, and the lifecycle around them. Every change to the kernel goes
// through one path, Daemon.Enforce: guard → store → firewall → audit →
// observers.
package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"sync"
	"sync/atomic"
	"time"

	"github.com/parryhq/parry/agent/audit"
	"github.com/parryhq/parry/agent/fleet"
	"github.com/parryhq/parry/agent/store"
	"github.com/parryhq/parry/firewall"
	"github.com/parryhq/parry/response"
)

// Version is parryd's version, set at build time with
// -ldflags "-X github.com/parryhq/parry/agent.Version=1.2.3".
var Version = "dev"

// Enforcer is what the daemon needs from the firewall. Production passes
// *firewall.NFT; tests inject failures.
type Enforcer interface {
	Ensure() error
	Block(elems []firewall.Element) error
	Unblock(prefixes []netip.Prefix) error
	SetAllow(prefixes []netip.Prefix) error
	Lockdown(l firewall.Lockdown) error
	Release() error
	Elements() ([]firewall.Element, error)
	Present() (bool, error)
	Remove() error
}

// watcher is implemented by firewalls that report changes to their table.
type watcher interface {
	Watch(ctx context.Context, changed, foreign func()) error
}

var (
	_ Enforcer = (*firewall.NFT)(nil)
	_ watcher  = (*firewall.NFT)(nil) // else self-heal silently falls back to the 10 s presence poll
)

// Options are the daemon's injected dependencies.
type Options struct {
	Firewall Enforcer
	Logger   *slog.Logger     // default slog.Default()
	Now      func() time.Time // default time.Now
	// HostAddrs reads the host's own addresses; default HostAddrs.
	HostAddrs func() ([]netip.Addr, error)
	// AddrEvents reports changes of the host's addresses as they happen;
	// default NetlinkAddrs (rtnetlink, in the daemon's network namespace).
	AddrEvents AddrEvents
	// Sweeper opens a second, independent reader of the kernel's block
	// sets for the sweep of unknown elements after a start with the table
	// present. Dumping a 100k-element hash set takes seconds (the kernel
	// resumes its walk from the start for every netlink message), so it
	// runs after READY on its own connection and never stalls enforcement.
	// Nil: the sweep runs inline in Reconcile with the Firewall (tests).
	Sweeper func() (ElementReader, func(), error)
	// AuditFile wraps the audit log's file (nil: none): failure injection
	// for tests.
	AuditFile func(audit.File) audit.File
}

// ElementReader reads the kernel's view of the block sets.
type ElementReader interface {
	Elements() ([]firewall.Element, error)
}

// Daemon is parryd.
type Daemon struct {
	log        *slog.Logger
	now        func() time.Time
	fw         Enforcer
	hostAddrs  func() ([]netip.Addr, error)
	addrEvents AddrEvents
	sweeper    func() (ElementReader, func(), error)
	store      *store.Store
	audit      *audit.Log
	trail      auditTrail  // pending audit records of store changes (agent/trail.go)
	chainBreak *ChainBreak // unacknowledged audit chain break (under mu)
	started    time.Time

	mu        sync.Mutex // serializes enforcement; guards everything below
	cfg       Config
	guard     Guard
	blocks    *index
	lockdown  *store.Lockdown
	observers []Observer
	incident  atomic.Pointer[Incident] // set by AttachIncident; told of every signal
	fleet     *fleet.Fleet             // nil: fleet off
	health    Health
	blockCap  blockCap // response.sender_block_cap (blockcap.go)

	ops     map[string]opEntry
	limiter *peerLimiter
	policy  atomic.Pointer[response.Engine] // swapped on reload
	signals signalLog                       // signal records waiting for the audit log
	closing chan struct{}
	closeMu sync.Once
	heal    chan struct{}
	foreign chan struct{} // someone else committed to nftables; our elements may be gone

	refusals *refusals // audit lines of repeated refusals, aggregated (refuse.go)

	uninstalled bool // the table was removed on request: no self-heal

	// crashAfterCommit, set by tests, simulates a crash between the store
	// commit of a change and its audit write: when it returns true, the
	// change stays committed and its audit line is never written.
	crashAfterCommit func() bool

	bulk atomic.Bool // a large change just happened: return freed memory to the OS

	integ integrityState // integrity monitor (agent/integrity.go)

	reload   func() error // set by Main: re-read and apply the config
	shutdown func()       // set by Main: stop the daemon
}

// bulkTargets is the size of a change after which the maintenance loop
// returns freed memory to the OS (netlink and store buffers of a 100k-block
// load would otherwise stay in RSS).
const bulkTargets = 1000

// Observer is told about every decision the daemon enforced (or refused),
// after the store and kernel have it. It runs synchronously under the
// daemon's lock: keep it short and hand slow work to a goroutine.
type Observer func(response.Decision, Outcome)

// New opens the store and audit log under cfg.StateDir. cfg must be
// validated. It does not touch the kernel; Run does.
func New(cfg Config, opts Options) (*Daemon, error) {
	if opts.Firewall == nil {
		return nil, errors.New("agent: no firewall")
	}
	d := &Daemon{
		log: opts.Logger, now: opts.Now, fw: opts.Firewall, hostAddrs: opts.HostAddrs, addrEvents: opts.AddrEvents, sweeper: opts.Sweeper,
		cfg: cfg, blocks: newIndex(), closing: make(chan struct{}), heal: make(chan struct{}, 1),
		foreign: make(chan struct{}, 1),
	}
	if d.log == nil {
		d.log = slog.Default()
	}
	if d.now == nil {
		d.now = time.Now
	}
	if d.hostAddrs == nil {
		d.hostAddrs = HostAddrs
	}
	if d.addrEvents == nil {
		d.addrEvents = NetlinkAddrs{}
	}
	d.started = d.now()
	if err := os.MkdirAll(cfg.StateDir, 0o750); err != nil {
		return nil, fmt.Errorf("agent: state dir: %w", err)
	}
	st, err := store.Open(filepath.Join(cfg.StateDir, "store.db"))
	if err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	d.store = st
	anchor, _ := readAnchor(st)
	al, brk, fresh, err := openAudit(st, cfg.StateDir, d.now, d.log, d.onAuditSync, opts.AuditFile)
	if err != nil {
		st.Close()
		return nil, fmt.Errorf("agent: %w", err)
	}
	d.audit, d.chainBreak = al, brk
	if err := d.recoverAudit(anchor, fresh); err != nil {
		d.Close()
		return nil, fmt.Errorf("agent: %w", err)
	}
	d.limiter = newPeerLimiter(cfg.Control.Rate, cfg.Control.Burst)
	d.refusals = newRefusals(refuseInterval, d.now, func(f map[string]any) { d.Audit("refuse", f) })
	d.registerOps()
	if err := d.load(); err != nil {
		d.Close()
		return nil, err
	}
	d.refreshGuard()
	eng, err := d.newPolicy(cfg, d.guard.Own, nil)
	if err != nil {
		d.Close()
		return nil, err
	}
	d.policy.Store(eng)
	return d, nil
}

// Close releases the store and audit log. It never touches the kernel: the
// table and its blocks stay while parryd is stopped.
func (d *Daemon) Close() error {
	d.closeMu.Do(func() { close(d.closing) })
	var errs []error
	if d.audit != nil {
		d.flushSignals()
		if d.refusals != nil {
			d.refusals.close()
		}
	}
	if d.store != nil && d.Policy() != nil {
		d.flushOffenders()
	}
	if d.audit != nil {
		errs = append(errs, d.audit.Close())
	}
	if d.store != nil {
		errs = append(errs, d.store.Close())
	}
	return errors.Join(errs...)
}

// Observe registers an observer for every enforced decision.
func (d *Daemon) Observe(o Observer) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.observers = append(d.observers, o)
}

// Config returns the current configuration.
func (d *Daemon) Config() Config {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.cfg
}

// Store is the durable store; others keep small state in its key/value space.
func (d *Daemon) Store() *store.Store { return d.store }

// Audit appends an event to the audit log (and the structured log). An
// error (wrapping audit.ErrFailed) means the line was not written; it is
// logged, and status reports the failure while it lasts. Requests that
// change the store check their audit write through the trail instead
// (agent/trail.go), and fail when it fails.
func (d *Daemon) Audit(event string, fields map[string]any) error {
	if err := d.audit.Append(event, fields); err != nil {
		d.log.Error("audit append failed", "event", event, "err", err)
		return err
	}
	d.logAudit(event, fields)
	return nil
}

// logAudit writes an audit event to the structured log.
func (d *Daemon) logAudit(event string, fields map[string]any) {
	attrs := make([]any, 0, 2*len(fields)+2)
	attrs = append(attrs, "event", event)
	for k, v := range fields {
		if k == "targets" { // can be thousands; the audit log has them
			if s, ok := v.([]string); ok && len(s) > 8 {
				v = fmt.Sprintf("%d targets", len(s))
			}
		}
		attrs = append(attrs, k, v)
	}
	d.log.Info("audit", attrs...)
}

// refreshGuard rebuilds the guard from the config and the host's addresses.
// Callers hold d.mu or run before the daemon is shared.
func (d *Daemon) refreshGuard() {
	own, err := d.hostAddrs()
	if err != nil {
		d.log.Warn("cannot read host addresses; guard keeps the old list", "err", err)
		own = d.guard.Own
	}
	d.guard = Guard{Allow: d.cfg.AllowPrefixes(), Own: own, MinV4: d.cfg.MinPrefixV4, MinV6: d.cfg.MinPrefixV6}
}

// load reads the store into the in-memory index.
func (d *Daemon) load() error {
	now := d.now().UnixMilli()
	err := d.store.Load(func(b store.Block) {
		d.blocks.put(b.Prefix, entry{created: b.Created, until: b.Until, dec: b.Decision})
	}, func(dr store.Decision) {
		d.blocks.addDecision(dr)
	})
	if err != nil {
		return fmt.Errorf("agent: %w", err)
	}
	l, err := d.store.Lockdown()
	if err != nil {
		return fmt.Errorf("agent: %w", err)
	}
	if l != nil && l.Until.After(d.now()) {
		d.lockdown = l
	}
	d.log.Info("store loaded", "blocks", d.blocks.len(), "expired", d.blocks.countExpired(now))
	return nil
}

// ApplyConfig switches to a new, validated config (SIGHUP). Table, socket
// and state_dir only change on restart; everything else applies now.
func (d *Daemon) ApplyConfig(cfg Config) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	old := d.cfg
	var restart []string
	if cfg.Table != old.Table || cfg.Priority != old.Priority {
		restart = append(restart, "table/priority")
		cfg.Table, cfg.Priority = old.Table, old.Priority
	}
	if cfg.Socket != old.Socket || cfg.StateDir != old.StateDir {
		restart = append(restart, "socket/state_dir")
		cfg.Socket, cfg.StateDir = old.Socket, old.StateDir
	}
	if !reflect.DeepEqual(cfg.Fleet, old.Fleet) {
		restart = append(restart, "fleet")
		cfg.Fleet = old.Fleet
	}
	if cfg.Control.MaxConnections != old.Control.MaxConnections || cfg.Control.MaxConnectionsPerUID != old.Control.MaxConnectionsPerUID ||
		cfg.Control.AdminReserve != old.Control.AdminReserve {
		restart = append(restart, "control.max_connections/max_connections_per_uid/admin_reserve")
	}
	if err := d.fw.SetAllow(cfg.AllowPrefixes()); err != nil {
		d.Audit("config_reload", map[string]any{"ok": false, "error": err.Error()})
		return fmt.Errorf("reload: allowlist: %w", err)
	}
	eng, err := d.newPolicy(cfg, d.guard.Own, d.Policy())
	if err != nil {
		d.Audit("config_reload", map[string]any{"ok": false, "error": err.Error()})
		return fmt.Errorf("reload: %w", err)
	}
	d.cfg = cfg
	d.refreshGuard()
	d.policy.Store(eng)
	d.limiter.reset(cfg.Control.Rate, cfg.Control.Burst)
	f := map[string]any{"ok": true, "allowlist": len(cfg.AllowPrefixes())}
	if len(restart) > 0 {
		f["needs_restart"] = restart
		d.log.Warn("config reload: some changes apply only after a restart", "keys", restart)
	}
	if n, example := d.blocksInAllowlist(cfg.AllowPrefixes()); n > 0 {
		f["allowlisted_blocks"] = n
		d.log.Warn("config reload: active blocks overlap the new allowlist; the allowlist wins (their traffic is accepted), 'parry list' still shows them: unblock them to tidy up",
			"count", n, "example", example)
	}
	d.Audit("config_reload", f)
	return nil
}

// blocksInAllowlist counts the active blocks that overlap allow, and names
// one. The caller holds d.mu.
func (d *Daemon) blocksInAllowlist(allow []netip.Prefix) (int, string) {
	if len(allow) == 0 {
		return 0, ""
	}
	n, example := 0, ""
	for p := range d.blocks.m {
		for _, a := range allow {
			if a.Overlaps(p) {
				if n == 0 || FormatTarget(p) < example {
					example = FormatTarget(p)
				}
				n++
				break
			}
		}
	}
	return n, example
}

// RefreshHostAddrs re-reads the host's own addresses for the guard and
// takes a new one out of the active blocks that cover it (agent/ownaddr.go).
// The address watcher calls it on every change, the maintenance loop every
// 30 s as a safety net.
func (d *Daemon) RefreshHostAddrs() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.refreshOwn("refresh")
}

// unblockOwnAddrs takes every current own address out of the active
// blocks (at start: an address may have appeared while parryd was down).
func (d *Daemon) unblockOwnAddrs() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.unblockOwn(d.guard.Own)
}
