// Package agent is the parry daemon: config, the control socket and its
// protocol, peer authentication, the store, the audit log, and the
// lifecycle around them. Daemon is the composition root: it builds the
// parts and wires them (docs/architecture.md). Every change to the kernel's
// blocks goes through one path, agent/enforce: guard → store → firewall →
// audit → observers.
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

	"github.com/parryhq/parry/agent/api"
	"github.com/parryhq/parry/agent/audit"
	"github.com/parryhq/parry/agent/control"
	"github.com/parryhq/parry/agent/enforce"
	"github.com/parryhq/parry/agent/events"
	"github.com/parryhq/parry/agent/heal"
	"github.com/parryhq/parry/agent/store"
	"github.com/parryhq/parry/firewall"
	"github.com/parryhq/parry/response"
)

// Version is parryd's version, set at build time with
// -ldflags "-X github.com/parryhq/parry/agent.Version=1.2.3".
var Version = "dev"

// Firewall is the firewall the daemon is built with: the kernel writes of
// the decision path and the table lifecycle of self-heal, two roles
// declared by their consumers. Production passes *firewall.NFT; tests
// inject failures.
type Firewall interface {
	enforce.Kernel
	heal.Table
}

var _ Firewall = (*firewall.NFT)(nil)

// Options are the daemon's injected dependencies.
type Options struct {
	Firewall Firewall
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
	Sweeper func() (heal.ElementReader, func(), error)
	// AuditFile wraps the audit log's file (nil: none): failure injection
	// for tests.
	AuditFile func(audit.File) audit.File
}

// Daemon is parryd: the composition root that builds and wires the parts
// (docs/architecture.md), with no business logic of its own. Each part owns
// its state and its lock:
//
//   - path (agent/enforce): the decision path, the one place a block
//     becomes real; blocks, guard, lockdown and sender cap under its lock.
//   - heal (agent/heal): reconcile and self-heal; the table's health.
//   - rec (enforce.Record): the audit log's writer and the trail of store
//     changes.
//   - server (agent/control): the control socket, peers, limits and the
//     op table; the ops themselves are in the files of the parts they ask.
//   - the policy (signal.go): the engine, escalation memory, signal records.
//   - integ (integrity.go), the incident tooling (incident.go) and the
//     fleet glue (fleet.go), fed by the path's observers and read-only
//     views.
type Daemon struct {
	log     *slog.Logger
	now     func() time.Time
	store   *store.Store
	audit   *audit.Log
	rec     *enforce.Record
	path    *enforce.Path
	heal    *heal.Healer
	timed   applyTimer // the firewall wrapper that times Block, if any (metrics)
	started time.Time

	reloadMu sync.Mutex // serializes ApplyConfig
	cfgMu    sync.Mutex // guards cfg, the config in force (swapped on reload)
	cfg      Config

	breakMu    sync.Mutex      // guards chainBreak
	chainBreak *api.ChainBreak // unacknowledged audit chain break
	breakOpen  atomic.Bool     // chainBreak != nil, for the metrics (no lock)

	incident atomic.Pointer[Incident] // set by AttachIncident; told of every signal
	fleet    *fleetGlue               // the fleet, once joined (fleet.go)
	feeds    *feedsPart               // blocklist feeds and their refresh loops (feeds.go)
	geo      *geoGlue                 // the country and ASN databases (geo.go)

	server *control.Server // the control server: socket, peers, limits, op table

	policy *policy // the signal path: engine, escalation memory, signal records (signal.go)

	integ *integrityGlue // the integrity monitor and its ops (agent/integrity.go)

	events    *events.Hub // the audit log's tap: live events for op events (events_ops.go)
	auditPath string

	sources *sourcesGlue // the log sources and detectors (agent/sources.go)

	closing chan struct{}
	closeMu sync.Once

	reload   func() (api.ReloadResult, error) // set by Main: re-read and apply the config
	shutdown func()                           // set by Main: stop the daemon

	// crashAfterCommit, set by tests, simulates a crash between the store
	// commit of a change and its audit write (enforce.Options).
	crashAfterCommit func() bool
}

// New opens the store and audit log under cfg.StateDir and builds the
// parts. cfg must be validated. It does not touch the kernel; Run does.
func New(cfg Config, opts Options) (*Daemon, error) {
	if opts.Firewall == nil {
		return nil, errors.New("agent: no firewall")
	}
	d := &Daemon{log: opts.Logger, now: opts.Now, cfg: cfg, closing: make(chan struct{})}
	if d.log == nil {
		d.log = slog.Default()
	}
	if d.now == nil {
		d.now = time.Now
	}
	if opts.AddrEvents == nil {
		opts.AddrEvents = NetlinkAddrs{}
	}
	d.timed, _ = opts.Firewall.(applyTimer)
	d.started = d.now()
	if err := os.MkdirAll(cfg.StateDir, 0o750); err != nil {
		return nil, fmt.Errorf("agent: state dir: %w", err)
	}
	st, err := store.Open(filepath.Join(cfg.StateDir, "store.db"))
	if err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	d.store = st
	d.rec = enforce.NewRecord(st, d.log, d.now)
	anchor, _ := readAnchor(st)
	al, brk, fresh, err := openAudit(st, cfg.StateDir, cfg.Audit, d.now, d.log, d.rec.OnSync, opts.AuditFile)
	if err != nil {
		st.Close()
		return nil, fmt.Errorf("agent: %w", err)
	}
	d.audit, d.chainBreak = al, brk
	d.breakOpen.Store(brk != nil)
	d.rec.Use(al)
	d.auditPath = filepath.Join(cfg.StateDir, "audit.log")
	d.events = events.NewHub(0)
	d.events.Start(al.SetTap(d.events))
	if err := d.rec.Recover(filepath.Join(cfg.StateDir, "audit.log"), anchor, fresh); err != nil {
		d.Close()
		return nil, fmt.Errorf("agent: %w", err)
	}
	// The parts, in the order they need each other. The path reports kernel
	// errors and bulk changes to self-heal and reads the sender cap from the
	// policy, both built after it (the path calls neither before it is
	// shared).
	d.path, err = enforce.New(enforce.Options{Kernel: opts.Firewall, Store: st, Record: d.rec, Log: d.log, Now: d.now,
		HostAddrs: opts.HostAddrs, SenderCap: func() response.BlockCap { return d.policy.senderCap() },
		OnKernelError: func(err error) { d.heal.KernelError(err) }, OnBulk: func() { d.heal.Bulk() },
		CrashAfterCommit: func() bool { return d.crashAfterCommit != nil && d.crashAfterCommit() }}, guardConfig(cfg))
	if err != nil {
		d.Close()
		return nil, err
	}
	d.heal = heal.New(heal.Options{Table: opts.Firewall, Path: d.path, Audit: d.Audit, Log: d.log, Now: d.now,
		Reasserted: func(reason string) {
			if in := d.incident.Load(); in != nil && in.metrics != nil {
				in.metrics.Reasserted(reason)
			}
		},
		TableName: cfg.Table, Sweeper: opts.Sweeper, AddrEvents: opts.AddrEvents,
		PruneEvery:    func() time.Duration { return d.Config().Prune.D() },
		ReassertEvery: func() time.Duration { return d.Config().Reassert.D() }})
	d.server = control.NewServer(control.Options{Log: d.log, Now: d.now, Audit: d.Audit,
		Config: func() control.Config { return d.Config().Control }})
	d.policy = &policy{log: d.log, now: d.now, store: st, audit: al, path: d.path, refused: d.server.Refused,
		observeSignal: d.observeSignal, observeSource: d.observeSource}
	eng, err := d.policy.build(cfg, d.path.Own(), nil)
	if err != nil {
		d.Close()
		return nil, err
	}
	d.policy.eng.Store(eng)
	d.fleet = &fleetGlue{path: d.path}
	d.geo = &geoGlue{log: d.log}
	d.geo.open(cfg.GeoIP)
	if d.feeds, err = newFeeds(cfg.Feeds, st, d.path, func() { d.heal.Bulk() }, d.log, d.now); err != nil {
		d.Close()
		return nil, err
	}
	d.integ = &integrityGlue{log: d.log, now: d.now, store: st, audit: d.Audit, config: d.Config,
		observe: d.observeFinding, handle: d.policy.handleOwn}
	if d.sources, err = newSourcesGlue(cfg.Sources, d.policy, st, d.log, d.now); err != nil {
		d.Close()
		return nil, err
	}
	d.registerOps()
	return d, nil
}

// guardConfig is the decision path's guard config from cfg.
func guardConfig(cfg Config) enforce.GuardConfig {
	return enforce.GuardConfig{Allow: cfg.AllowPrefixes(), MinV4: cfg.MinPrefixV4, MinV6: cfg.MinPrefixV6}
}

// maintain runs the maintenance loop (agent/heal) until ctx ends; every
// second, besides its own work, it syncs the audit log, retries a failed
// audit recovery and calls ping (may be nil: the watchdog).
func (d *Daemon) maintain(ctx context.Context, ping func()) {
	d.heal.Run(ctx, func() {
		if err := d.audit.Sync(); err != nil {
			d.log.Error("audit sync", "err", err)
		}
		d.rec.RetryRecovery()
		if ping != nil {
			ping()
		}
	})
}

// Close releases the store and audit log. It never touches the kernel: the
// table and its blocks stay while parryd is stopped.
func (d *Daemon) Close() error {
	d.closeMu.Do(func() { close(d.closing) })
	var errs []error
	if d.audit != nil && d.policy != nil {
		d.policy.flushSignals()
	}
	if d.audit != nil && d.server != nil {
		d.server.Close()
	}
	if d.store != nil && d.policy != nil && d.policy.engine() != nil {
		d.policy.flushOffenders()
	}
	if d.audit != nil {
		errs = append(errs, d.audit.Close())
	}
	if d.store != nil {
		errs = append(errs, d.store.Close())
	}
	return errors.Join(errs...)
}

// Config returns the current configuration.
func (d *Daemon) Config() Config {
	d.cfgMu.Lock()
	defer d.cfgMu.Unlock()
	return d.cfg
}

// Store is the durable store; others keep small state in its key/value space.
func (d *Daemon) Store() *store.Store { return d.store }

// Audit appends an event to the audit log (and the structured log); see
// enforce.Record.Audit.
func (d *Daemon) Audit(event string, fields map[string]any) error { return d.rec.Audit(event, fields) }

// ApplyConfig switches to a new, validated config (SIGHUP). Table, socket
// and state_dir only change on restart; everything else applies now.
func (d *Daemon) ApplyConfig(cfg Config) error {
	_, err := d.applyConfig(cfg)
	return err
}

// applyConfig is ApplyConfig, with what needs a restart or could not be
// applied (the answer of op reload).
func (d *Daemon) applyConfig(cfg Config) (api.ReloadResult, error) {
	d.reloadMu.Lock()
	defer d.reloadMu.Unlock()
	old := d.Config()
	var restart []string
	if cfg.Table != old.Table || cfg.Priority != old.Priority {
		restart = append(restart, "table/priority")
		cfg.Table, cfg.Priority = old.Table, old.Priority
	}
	if cfg.Socket != old.Socket || cfg.StateDir != old.StateDir {
		restart = append(restart, "socket/state_dir")
		cfg.Socket, cfg.StateDir = old.Socket, old.StateDir
	}
	if !reflect.DeepEqual(cfg.Feeds, old.Feeds) {
		restart = append(restart, "feeds")
		cfg.Feeds = old.Feeds
	}
	if !reflect.DeepEqual(cfg.Fleet, old.Fleet) {
		restart = append(restart, "fleet")
		cfg.Fleet = old.Fleet
	}
	if !reflect.DeepEqual(cfg.Sources, old.Sources) {
		restart = append(restart, "sources")
		cfg.Sources = old.Sources
	}
	if cfg.Control.MaxConnections != old.Control.MaxConnections || cfg.Control.MaxConnectionsPerUID != old.Control.MaxConnectionsPerUID ||
		cfg.Control.AdminReserve != old.Control.AdminReserve {
		restart = append(restart, "control.max_connections/max_connections_per_uid/admin_reserve")
	}
	eng, err := d.policy.build(cfg, d.path.Own(), d.policy.engine())
	if err != nil {
		d.Audit("config_reload", map[string]any{"ok": false, "error": err.Error()})
		return api.ReloadResult{}, fmt.Errorf("reload: %w", err)
	}
	n, example, err := d.path.Configure(context.Background(), guardConfig(cfg))
	if err != nil {
		d.Audit("config_reload", map[string]any{"ok": false, "error": err.Error()})
		return api.ReloadResult{}, fmt.Errorf("reload: %w", err)
	}
	parts := d.reloadParts(old, &cfg) // integrity, evidence, notify, metrics, check (agent/reload.go)
	restart = append(restart, parts.NeedsRestart...)
	d.cfgMu.Lock()
	d.cfg = cfg
	d.cfgMu.Unlock()
	d.policy.eng.Store(eng)
	d.geo.open(cfg.GeoIP) // the files may have been replaced (geoipupdate)
	d.server.Limit(cfg.Control.Rate, cfg.Control.Burst)
	d.audit.SetConfig(cfg.Audit)
	f := map[string]any{"ok": true, "allowlist": len(cfg.AllowPrefixes())}
	if len(restart) > 0 {
		f["needs_restart"] = restart
		d.log.Warn("config reload: some changes apply only after a restart", "keys", restart)
	}
	if len(parts.NotApplied) > 0 {
		f["not_applied"] = parts.NotApplied
		d.log.Warn("config reload: some sections were not applied; they keep their old values, reload again", "sections", parts.NotApplied)
	}
	if n > 0 {
		f["allowlisted_blocks"] = n
		d.log.Warn("config reload: active blocks overlap the new allowlist; the allowlist wins (their traffic is accepted), 'parry list' still shows them: unblock them to tidy up",
			"count", n, "example", example)
	}
	d.Audit("config_reload", f)
	return api.ReloadResult{NeedsRestart: restart, NotApplied: parts.NotApplied}, nil
}
