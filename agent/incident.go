package agent

import (
	"cmp"
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/parryhq/parry/agent/api"
	"github.com/parryhq/parry/agent/enforce"
	"github.com/parryhq/parry/agent/evidence"
	"github.com/parryhq/parry/agent/heal"
	"github.com/parryhq/parry/agent/metrics"
	webhook "github.com/parryhq/parry/agent/notify"
	"github.com/parryhq/parry/firewall"
	"github.com/parryhq/parry/response"
)

// Bounds of the incident tooling's background work.
const (
	incidentQueue   = 64                     // pending evidence captures
	maxFindingsKept = 256                    // recent integrity findings kept for evidence
	maxEvidenceBlks = 10000                  // active blocks written into one snapshot
	maxBlockConns   = 256                    // connections recorded per block decision
	maxPendingBlks  = 1024                   // block decisions waiting for their connection lookup
	connLookupGap   = 250 * time.Millisecond // between two /proc walks for blocks
)

// Incident wires evidence capture, notifications, metrics, the report and
// the host check into the daemon. It hears of decisions through the
// decision path's observer hook, after the store and the kernel have them,
// with the path's state after each; otherwise it reads snapshots (the
// path's Active and Stats, Status) and never takes another part's lock. It
// does all slow work (evidence, connection lookups, webhooks) on its own
// goroutines: enforcement never waits for it.
type Incident struct {
	d          *Daemon
	log        *slog.Logger
	configPath string
	host       string

	cfgMu sync.Mutex // guards cfg: the sections in force (reload: agent/reload.go)
	cfg   Config

	collector atomic.Pointer[evidence.Collector] // swapped on reload
	evidence  *evidence.Store
	notifier  *webhook.Notifier  // updated in place on reload
	metrics   *metrics.Metrics   // nil when metrics are off
	rebind    chan metricsRebind // reload: serve the metrics at a new address or path

	jobs    chan incidentJob
	dropped atomic.Uint64

	// Block decisions waiting for one shared connection lookup: a burst of
	// blocks costs one /proc walk, and walks are at least connLookupGap apart.
	pendMu  sync.Mutex
	pending []pendingBlock
	pendSig chan struct{}

	mu       sync.Mutex
	findings []evidence.Finding // recent integrity findings, oldest first
}

type incidentJob struct {
	name string
	run  func(ctx context.Context)
}

// AttachIncident builds the incident tooling from the daemon's config,
// registers its ops and its observer. Call before Serve; then Run.
// configPath is the config file in use (for the host check), may be empty.
func AttachIncident(d *Daemon, configPath string) (*Incident, error) {
	cfg := d.Config()
	in := &Incident{d: d, log: d.log.With("part", "incident"), cfg: cfg, configPath: configPath,
		jobs: make(chan incidentJob, incidentQueue), pendSig: make(chan struct{}, 1), rebind: make(chan metricsRebind)}
	in.host, _ = os.Hostname()
	in.collector.Store(evidence.NewCollector(cfg.Evidence, d.now))
	st, err := evidence.OpenStore(filepath.Join(cfg.StateDir, "evidence"), d.now)
	if err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	in.evidence = st
	if cfg.Metrics.Enabled {
		in.metrics = metrics.New()
		in.metrics.AuditChain(d.auditChainOK)
	}
	nopts := webhook.Options{Logger: in.log, Now: d.now, Host: in.host}
	if in.metrics != nil {
		nopts.Observe = in.metrics.NotifyResult
	}
	if in.notifier, err = webhook.New(cfg.Notify, nopts); err != nil {
		return nil, fmt.Errorf("agent: notify: %w", err)
	}
	in.registerOps()
	d.path.Observe(in.observe)
	d.incident.Store(in)
	return in, nil
}

// Metrics returns the metrics, or nil when they are off.
func (in *Incident) Metrics() *metrics.Metrics { return in.metrics }

// Run runs the background work until ctx ends: the job worker, the
// webhook workers, the metrics endpoint and the gauge refresher.
func (in *Incident) Run(ctx context.Context) {
	var wg sync.WaitGroup
	wg.Go(func() { in.work(ctx) })
	wg.Go(func() { in.lookupBlocks(ctx) })
	wg.Go(func() { in.notifier.Run(ctx) })
	if in.metrics != nil {
		wg.Go(func() { in.serveMetrics(ctx) })
		wg.Go(func() { in.refreshGauges(ctx) })
	}
	wg.Wait()
}

// refreshGauges keeps the block and lockdown gauges right between
// decisions (expiry, reconcile) from the daemon's memory, never the kernel.
func (in *Incident) refreshGauges(ctx context.Context) {
	t := time.NewTicker(5 * time.Second)
	defer t.Stop()
	for {
		if st, err := in.d.path.Stats(ctx); err == nil { // busy: the gauges stay until the next refresh
			in.updateGauges(st.Blocks4, st.Blocks6, st.Lockdown)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// updateGauges sets the block and lockdown gauges.
func (in *Incident) updateGauges(v4, v6 int, lock api.LockdownState) {
	in.metrics.SetActiveBlocks(v4, v6)
	in.metrics.SetLockdown(lock.Active, lock.Until)
}

func (in *Incident) work(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case j := <-in.jobs:
			j.run(ctx)
		}
	}
}

// enqueue never blocks: a full queue drops the job (counted and logged).
func (in *Incident) enqueue(name string, run func(ctx context.Context)) {
	select {
	case in.jobs <- incidentJob{name: name, run: run}:
	default:
		if n := in.dropped.Add(1); logDrop(n) {
			in.log.Warn("incident work queue full; job dropped", "job", name, "dropped_total", n)
		}
	}
}

// observeSignal tells the incident tooling of a signal and what became of
// it (the policy's outcome, or why it was refused): metrics count it.
func (d *Daemon) observeSignal(s response.Signal, result string) {
	if in := d.incident.Load(); in != nil && in.metrics != nil {
		in.metrics.Signal(s, result)
	}
}

// observeSource counts a line of a log source (metrics).
func (d *Daemon) observeSource(source, detector, result string) {
	if in := d.incident.Load(); in != nil && in.metrics != nil {
		in.metrics.SourceLine(source, detector, result, d.now())
	}
}

// succeeded tells from the outcome and the path's state after it whether
// the decision took effect.
func (in *Incident) succeeded(dec response.Decision, out enforce.Outcome, st enforce.State) bool {
	switch {
	case out.DryRun || dec.Action == response.ActionLog || dec.Action == response.ActionNotify:
		return true
	case dec.Action == response.ActionBlock:
		return len(out.Applied) > 0
	case dec.Action == response.ActionUnblock:
		return out.Removed > 0 || len(out.NotFound) > 0
	case dec.Action == response.ActionLockdown:
		return st.LockdownID != "" && st.LockdownID == dec.ID
	case dec.Action == response.ActionRelease:
		return st.LockdownID == ""
	}
	return false
}

// observe runs under the decision path's lock after every decision: it
// only counts, queues webhooks and queues background jobs.
func (in *Incident) observe(dec response.Decision, out enforce.Outcome, st enforce.State) {
	ok := in.succeeded(dec, out, st)
	if in.metrics != nil {
		in.updateGauges(st.Blocks4, st.Blocks6, st.Lockdown)
		switch {
		case out.Err != nil:
			in.metrics.DecisionRefused(dec)
		case ok:
			var apply time.Duration
			if t := in.d.timed; t != nil && dec.Action == response.ActionBlock && !out.DryRun {
				apply = t.lastBlock()
			}
			in.metrics.Decision(dec, apply)
		}
	}
	if !ok {
		return
	}
	in.notifyDecision(dec, out)
	if out.DryRun {
		return
	}
	ecfg := in.config().Evidence
	switch dec.Action {
	case response.ActionBlock:
		if ecfg.RecordBlockConnections() {
			in.queueLookup(pendingBlock{id: dec.ID, targets: out.Applied})
		}
	case response.ActionLockdown:
		if ecfg.AutoOnLockdown() {
			reason := fmt.Sprintf("lockdown %s: %s", dec.ID, dec.Reason)
			in.enqueue("evidence", func(ctx context.Context) { in.captureLogged(ctx, reason, "lockdown") })
		}
	}
}

// observeFinding tells the incident tooling of an integrity finding, as
// the integrity wiring audits it (whether or not a policy rule turns it
// into a decision).
func (d *Daemon) observeFinding(s response.Signal) {
	if in := d.incident.Load(); in != nil {
		in.finding(s)
	}
}

// finding keeps the finding for evidence, counts it, notifies it when at
// or above notify.min_severity, and captures evidence when it is critical.
// It never blocks.
func (in *Incident) finding(s response.Signal) {
	f := evidence.Finding{Path: s.Path, Kind: s.Attrs["finding"], Severity: s.Severity, Detail: s.Detail, Time: s.Time,
		Actor: s.Attrs["actor"], Diff: cmp.Or(s.Attrs["diff"], s.Attrs["content"])}
	in.mu.Lock()
	in.findings = append(in.findings, f)
	if len(in.findings) > maxFindingsKept {
		in.findings = in.findings[len(in.findings)-maxFindingsKept:]
	}
	kept := len(in.findings)
	in.mu.Unlock()
	if in.metrics != nil {
		in.metrics.Finding(s.Severity, kept)
	}
	in.notifier.Notify(webhook.Event{Kind: webhook.KindFinding, Severity: s.Severity,
		Title: fmt.Sprintf("integrity %s on %s: %s", cmp.Or(f.Kind, "finding"), s.Path, s.Detail), Finding: &s})
	if strings.EqualFold(s.Severity, "critical") && in.config().Evidence.AutoOnCritical() {
		reason := fmt.Sprintf("critical integrity finding on %s: %s", s.Path, s.Detail)
		in.enqueue("evidence", func(ctx context.Context) { in.captureLogged(ctx, reason, "integrity") })
	}
}

func (in *Incident) notifyDecision(dec response.Decision, out enforce.Outcome) {
	kind, sev := webhook.KindDecision, "medium"
	switch dec.Action {
	case response.ActionLockdown:
		kind, sev = webhook.KindLockdown, "critical"
	case response.ActionRelease:
		kind, sev = webhook.KindLockdown, "info"
	case response.ActionUnblock:
		sev = "low"
	}
	if !in.notifier.Wants(kind, sev) {
		return
	}
	d := dec
	in.notifier.Notify(webhook.Event{Kind: kind, Severity: sev, Title: decisionTitle(dec, out), Decision: &d})
}

func decisionTitle(dec response.Decision, out enforce.Outcome) string {
	var b strings.Builder
	b.WriteString(string(dec.Action))
	if out.DryRun {
		b.WriteString(" (dry run)")
	}
	ts := targetStrings(dec.Targets)
	if len(out.Applied) > 0 {
		ts = targetStrings(out.Applied)
	}
	if len(ts) > 3 {
		ts = append(ts[:3], fmt.Sprintf("and %d more", len(ts)-3))
	}
	if len(ts) > 0 {
		b.WriteString(" " + strings.Join(ts, ", "))
	}
	switch {
	case dec.Action == response.ActionLockdown || (dec.Action == response.ActionBlock && !dec.Until.IsZero()):
		b.WriteString(" until " + dec.Until.UTC().Format(time.RFC3339))
	case dec.Action == response.ActionBlock:
		b.WriteString(" permanently")
	}
	if who := strings.Trim(dec.Source+"/"+dec.Rule, "/"); who != "" {
		b.WriteString(" by " + who)
	}
	if dec.Reason != "" {
		b.WriteString(": " + dec.Reason)
	}
	return b.String()
}

// logDrop keeps a flood from flooding the journal too: the first drop and
// every 1000th are logged, with the running total.
func logDrop(n uint64) bool { return n == 1 || n%1000 == 0 }

type pendingBlock struct {
	id      string
	targets []netip.Prefix
}

// queueLookup never blocks; beyond maxPendingBlks decisions are dropped.
func (in *Incident) queueLookup(p pendingBlock) {
	in.pendMu.Lock()
	full := len(in.pending) >= maxPendingBlks
	if !full {
		in.pending = append(in.pending, p)
	}
	in.pendMu.Unlock()
	if full {
		if n := in.dropped.Add(1); logDrop(n) {
			in.log.Warn("too many blocks waiting for their connection lookup; skipped", "decision", p.id, "dropped_total", n)
		}
		return
	}
	select {
	case in.pendSig <- struct{}{}:
	default:
	}
}

// lookupBlocks records, after the fact, what blocked addresses were
// connected to: one /proc walk for every block decision pending, then a
// pause, so a flood of blocks costs a bounded share of a CPU.
func (in *Incident) lookupBlocks(ctx context.Context) {
	gap := time.NewTimer(0)
	defer gap.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-in.pendSig:
		}
		select { // keep walks connLookupGap apart
		case <-ctx.Done():
			return
		case <-gap.C:
		}
		in.pendMu.Lock()
		batch := in.pending
		in.pending = nil
		in.pendMu.Unlock()
		in.recordConnections(ctx, batch)
		gap.Reset(connLookupGap)
	}
}

// recordConnections audits one block_connections event per decision whose
// addresses had connections.
func (in *Incident) recordConnections(ctx context.Context, batch []pendingBlock) {
	var all []netip.Prefix
	for _, p := range batch {
		all = append(all, p.targets...)
	}
	if len(all) == 0 {
		return
	}
	conns, err := in.collector.Load().ConnectionsOf(ctx, all)
	if err != nil {
		in.log.Warn("connections of blocked addresses not recorded", "decisions", len(batch), "err", err)
		return
	}
	for _, p := range batch {
		var mine []evidence.Connection
		for _, c := range conns {
			if prefixesContain(p.targets, c.Remote.Addr()) {
				mine = append(mine, c)
			}
		}
		if len(mine) == 0 {
			continue
		}
		f := map[string]any{"decision": p.id, "targets": targetStrings(p.targets), "count": len(mine)}
		if len(mine) > maxBlockConns {
			mine, f["truncated"] = mine[:maxBlockConns], true
		}
		f["connections"] = mine
		in.d.Audit("block_connections", f)
	}
}

func prefixesContain(ps []netip.Prefix, a netip.Addr) bool {
	for _, p := range ps {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

func (in *Incident) captureLogged(ctx context.Context, reason, trigger string) {
	if _, err := in.Capture(ctx, reason, trigger); err != nil {
		in.log.Error("evidence capture failed", "trigger", trigger, "err", err)
	}
}

// Capture takes a snapshot, adds the daemon's view (active blocks,
// lockdown, recent findings), writes it once and records its hash in the
// audit chain.
func (in *Incident) Capture(ctx context.Context, reason, trigger string) (evidence.Record, error) {
	snap, err := in.collector.Load().Capture(ctx, reason, trigger)
	if err != nil {
		return evidence.Record{}, err
	}
	in.fill(ctx, snap)
	rec, err := in.evidence.Save(snap)
	if err != nil {
		return evidence.Record{}, err
	}
	f := map[string]any{"id": rec.ID, "sha256": rec.SHA256, "size": rec.Size, "reason": reason, "trigger": trigger}
	if snap.Incomplete {
		f["incomplete"] = true
	}
	in.d.Audit("evidence", f)
	if in.metrics != nil {
		in.metrics.EvidenceCaptured(trigger)
	}
	return rec, nil
}

func (in *Incident) fill(ctx context.Context, s *evidence.Snapshot) {
	s.Blocks, s.BlocksTotal = in.activeBlocks()
	if len(s.Blocks) > maxEvidenceBlks {
		s.Blocks, s.BlocksTruncated = s.Blocks[:maxEvidenceBlks], true
	}
	if st, err := in.d.path.Stats(ctx); err != nil {
		s.Errors = append(s.Errors, "lockdown state: "+err.Error())
	} else if l := st.Lockdown; l.Active {
		s.Lockdown = &evidence.Lockdown{Until: l.Until, Isolate: l.Isolate, Reason: l.Reason}
	}
	open, ok, err := in.openFindings(ctx)
	if ok {
		s.Findings = append(s.Findings, open...)
		return
	}
	if err != nil {
		// A busy or stuck monitor costs the snapshot its open findings,
		// never the snapshot: the recent ones below stand in.
		s.Errors = append(s.Errors, "integrity open findings: "+err.Error()+"; recent findings recorded instead")
	}
	in.mu.Lock()
	s.Findings = append(s.Findings, in.findings...)
	in.mu.Unlock()
}

// openFindings are the integrity monitor's unresolved findings, when it
// runs. It waits for the monitor no longer than integrityWait.
func (in *Incident) openFindings(ctx context.Context) ([]evidence.Finding, bool, error) {
	open, ok, err := in.d.integ.openFindings(ctx)
	if !ok || err != nil {
		return nil, false, err
	}
	var out []evidence.Finding
	for _, f := range open {
		out = append(out, evidence.Finding{Path: f.Path, Kind: f.Kind, Severity: f.Severity, Detail: f.Detail, Time: f.Time,
			Actor: f.ActorText(), Diff: f.ContentText()})
	}
	return out, true, nil
}

// activeBlocks copies the active blocks out of the decision path (a
// snapshot, address order).
func (in *Incident) activeBlocks() ([]evidence.Block, int) {
	act := in.d.path.Active()
	out := make([]evidence.Block, len(act))
	for i, b := range act {
		out[i] = evidence.Block{Prefix: b.Prefix, Reason: b.Decision.Reason}
		if !b.Until.IsZero() {
			out[i].Until = b.Until.UTC()
		}
	}
	return out, len(out)
}

// applyTimer is implemented by the firewall wrapper that times Block.
type applyTimer interface{ lastBlock() time.Duration }

// TimeApply wraps the firewall so that the metrics can report how long
// each block took in the kernel. The decision path calls the firewall
// under its lock, so the last duration belongs to the decision being
// observed.
func TimeApply(fw Firewall) Firewall {
	t := &timedFirewall{Firewall: fw}
	if w, ok := fw.(heal.Watcher); ok {
		return &timedWatchFirewall{timedFirewall: t, w: w}
	}
	return t
}

type timedFirewall struct {
	Firewall
	last atomic.Int64
}

func (t *timedFirewall) Apply(del, add []firewall.Element) error {
	start := time.Now()
	err := t.Firewall.Apply(del, add)
	t.last.Store(int64(time.Since(start)))
	return err
}

func (t *timedFirewall) lastBlock() time.Duration { return time.Duration(t.last.Load()) }

type timedWatchFirewall struct {
	*timedFirewall
	w heal.Watcher
}

func (t *timedWatchFirewall) Watch(ctx context.Context, changed, foreign func()) error {
	return t.w.Watch(ctx, changed, foreign)
}
