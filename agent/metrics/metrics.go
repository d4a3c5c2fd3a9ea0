// Package metrics is parry's optional Prometheus endpoint. Every value comes
// from events the agent reports (decisions, signals, findings, lockdowns,
// notifications) or from counts it keeps in memory: a scrape reads these
// numbers and never touches the kernel or the store.
package metrics

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/parryhq/parry/response"
)

// DefaultListen is where the endpoint listens when enabled without an address.
const DefaultListen = "127.0.0.1:9477"

// maxLabelValues bounds the distinct values of free-form labels (signal
// kinds, senders): beyond it new values are counted as "other", so a
// hostile sender cannot grow the registry without bound.
const maxLabelValues = 64

// Config is the `metrics:` section of parry.yaml. Off by default.
type Config struct {
	Enabled bool   `yaml:"enabled"`
	Listen  string `yaml:"listen"` // host:port; default 127.0.0.1:9477
	Path    string `yaml:"path"`   // default /metrics
}

// Validate reports the first invalid knob.
func (c Config) Validate() error {
	if c.Listen != "" {
		host, port, err := net.SplitHostPort(c.Listen)
		if err != nil {
			return fmt.Errorf("listen: %w", err)
		}
		if host == "" {
			return fmt.Errorf("listen: %q has no host; write 0.0.0.0:%s to listen everywhere on purpose", c.Listen, port)
		}
	}
	if c.Path != "" && !strings.HasPrefix(c.Path, "/") {
		return fmt.Errorf("path: %q must start with /", c.Path)
	}
	return nil
}

// WithDefaults fills the zero values.
func (c Config) WithDefaults() Config {
	if c.Listen == "" {
		c.Listen = DefaultListen
	}
	if c.Path == "" {
		c.Path = "/metrics"
	}
	return c
}

// Metrics holds parry's collectors in its own registry.
type Metrics struct {
	reg            *prometheus.Registry
	activeBlocks   *prometheus.GaugeVec
	decisions      *prometheus.CounterVec
	signals        *prometheus.CounterVec
	applyLatency   prometheus.Histogram
	findings       *prometheus.CounterVec
	findingsOpen   prometheus.Gauge
	lockdown       prometheus.Gauge
	lockdownUntil  prometheus.Gauge
	notifyFailures *prometheus.CounterVec
	evidence       *prometheus.CounterVec
	sourceLines    *prometheus.CounterVec
	sourceLast     *prometheus.GaugeVec
	reasserts      *prometheus.CounterVec
	heals          prometheus.Counter

	mu     sync.Mutex
	labels map[string]map[string]bool // label name -> values seen
}

// New registers parry's metrics (and the Go runtime and process collectors)
// in a fresh registry.
func New() *Metrics {
	m := &Metrics{reg: prometheus.NewRegistry(), labels: map[string]map[string]bool{}}
	f := func(c prometheus.Collector) { m.reg.MustRegister(c) }
	m.activeBlocks = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "parry_blocks_active",
		Help: "Blocks currently in force, by address family (ipv4, ipv6)."}, []string{"family"})
	m.decisions = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "parry_decisions_total",
		Help: "Decisions, by action, cause (the decision's source: cli, policy, integrity, fleet) and result (applied, refused)."}, []string{"action", "cause", "result"})
	m.signals = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "parry_signals_total",
		Help: "Signals received, by kind, sender and result."}, []string{"kind", "sender", "result"})
	m.applyLatency = prometheus.NewHistogram(prometheus.HistogramOpts{Name: "parry_block_apply_seconds",
		Help:    "Time from a block decision to the kernel accepting it.",
		Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5}})
	m.findings = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "parry_integrity_findings_total",
		Help: "Integrity findings reported, by severity."}, []string{"severity"})
	m.findingsOpen = prometheus.NewGauge(prometheus.GaugeOpts{Name: "parry_integrity_findings_open",
		Help: "Integrity findings not yet resolved."})
	m.lockdown = prometheus.NewGauge(prometheus.GaugeOpts{Name: "parry_lockdown_active",
		Help: "1 while the host is locked down."})
	m.lockdownUntil = prometheus.NewGauge(prometheus.GaugeOpts{Name: "parry_lockdown_until_timestamp_seconds",
		Help: "When the current lockdown ends (Unix time); 0 when none."})
	m.notifyFailures = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "parry_notify_failures_total",
		Help: "Notifications not delivered, by webhook and reason (failed: gave up after retries; dropped: queue full)."},
		[]string{"webhook", "reason"})
	m.evidence = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "parry_evidence_captures_total",
		Help: "Evidence snapshots written, by trigger."}, []string{"trigger"})
	m.sourceLines = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "parry_source_lines_total",
		Help: "Lines read by the log sources, by source, detector (empty: none decided) and result (matched, ignored, missed, refused, not_applicable)."},
		[]string{"source", "detector", "result"})
	m.sourceLast = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "parry_source_last_line_timestamp_seconds",
		Help: "When each log source last read a line (Unix time); the source's start while it has read none."}, []string{"source"})
	m.reasserts = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "parry_table_reasserts_total",
		Help: "Times the store's blocks, allowlist and lockdown were re-asserted into the kernel, by reason (start, missing: the table was gone and was rebuilt, foreign_change: another program changed nftables, other)."},
		[]string{"reason"})
	m.heals = prometheus.NewCounter(prometheus.CounterOpts{Name: "parry_table_heals_total",
		Help: "Times parry's nftables table was found missing and rebuilt (self-heal)."})
	for _, c := range []prometheus.Collector{m.activeBlocks, m.decisions, m.signals, m.applyLatency, m.findings,
		m.findingsOpen, m.lockdown, m.lockdownUntil, m.notifyFailures, m.evidence, m.reasserts, m.heals, m.sourceLines, m.sourceLast,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{})} {
		f(c)
	}
	for _, fam := range []string{"ipv4", "ipv6"} {
		m.activeBlocks.WithLabelValues(fam)
	}
	for _, r := range ReassertReasons {
		m.reasserts.WithLabelValues(r)
	}
	return m
}

// ReassertReasons are the values of parry_table_reasserts_total's reason.
var ReassertReasons = []string{"start", "missing", "foreign_change", "other"}

// Reasserted counts a re-assertion of the store into the kernel; reason
// is the healer's ("start", "table missing", "foreign_change", ...),
// mapped to ReassertReasons. A table found missing is also a heal.
func (m *Metrics) Reasserted(reason string) {
	switch reason {
	case "start", "foreign_change":
	case "table missing":
		reason = "missing"
		m.heals.Inc()
	default:
		reason = "other"
	}
	m.reasserts.WithLabelValues(reason).Inc()
}

// AuditChain exports parry_audit_chain_ok from ok, called at each scrape:
// it must read only a snapshot (atomics), never wait on a lock.
func (m *Metrics) AuditChain(ok func() bool) {
	m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "parry_audit_chain_ok",
		Help: "1 while the audit log is being written and its chain is intact; 0 when appends are failing (full disk, I/O error) or the chain was found broken at start and not yet acknowledged (parry audit ack)."},
		func() float64 {
			if ok() {
				return 1
			}
			return 0
		}))
}

// Registry is the registry scraped by Handler (tests use it with testutil).
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// bounded returns v, "unknown" for empty, or "other" once the label has
// maxLabelValues distinct values.
func (m *Metrics) bounded(label, v string) string {
	if v == "" {
		return "unknown"
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	seen := m.labels[label]
	if seen == nil {
		seen = map[string]bool{}
		m.labels[label] = seen
	}
	if !seen[v] && len(seen) >= maxLabelValues {
		return "other"
	}
	seen[v] = true
	return v
}

// SetActiveBlocks sets the in-memory count of blocks in force.
func (m *Metrics) SetActiveBlocks(v4, v6 int) {
	m.activeBlocks.WithLabelValues("ipv4").Set(float64(v4))
	m.activeBlocks.WithLabelValues("ipv6").Set(float64(v6))
}

// Decision counts one decision that took effect; for blocks that reached the kernel, apply
// is the time it took (0: not measured).
func (m *Metrics) Decision(d response.Decision, apply time.Duration) {
	m.decisions.WithLabelValues(m.bounded("action", string(d.Action)), m.bounded("cause", d.Source), "applied").Inc()
	if d.Action == response.ActionBlock && apply > 0 {
		m.applyLatency.Observe(apply.Seconds())
	}
}

// DecisionRefused counts a decision that was refused or failed and changed
// nothing (the guard, a bad request, the store or the kernel).
func (m *Metrics) DecisionRefused(d response.Decision) {
	m.decisions.WithLabelValues(m.bounded("action", string(d.Action)), m.bounded("cause", d.Source), "refused").Inc()
}

// Signal counts one signal with its result ("accepted", "refused", ...).
func (m *Metrics) Signal(s response.Signal, result string) {
	sender := s.Sender.User
	if sender == "" && (s.Sender.UID != 0 || s.Sender.PID != 0) {
		sender = fmt.Sprintf("uid=%d", s.Sender.UID)
	}
	m.signals.WithLabelValues(m.bounded("kind", s.Kind), m.bounded("sender", sender), m.bounded("result", result)).Inc()
}

// SourceLine counts one line of a log source and what its detectors made
// of it.
func (m *Metrics) SourceLine(source, detector, result string, at time.Time) {
	src := m.bounded("source", source)
	det := detector
	if det != "" {
		det = m.bounded("detector", detector)
	}
	m.sourceLines.WithLabelValues(src, det, m.bounded("result", result)).Inc()
	m.sourceLast.WithLabelValues(src).Set(float64(at.UnixNano()) / 1e9)
}

// SourceStarted sets a source's last-line time to its start, so that a
// source that never reads a line is seen as silent.
func (m *Metrics) SourceStarted(source string, at time.Time) {
	m.sourceLast.WithLabelValues(m.bounded("source", source)).Set(float64(at.UnixNano()) / 1e9)
}

// Finding counts an integrity finding; open is the number now unresolved.
func (m *Metrics) Finding(severity string, open int) {
	m.findings.WithLabelValues(m.bounded("severity", severity)).Inc()
	m.findingsOpen.Set(float64(open))
}

// SetOpenFindings sets the number of unresolved findings.
func (m *Metrics) SetOpenFindings(open int) { m.findingsOpen.Set(float64(open)) }

// SetLockdown records the lockdown state; until is ignored when inactive.
func (m *Metrics) SetLockdown(active bool, until time.Time) {
	if !active {
		m.lockdown.Set(0)
		m.lockdownUntil.Set(0)
		return
	}
	m.lockdown.Set(1)
	m.lockdownUntil.Set(float64(until.Unix()))
}

// NotifyResult matches notify.Options.Observe: it counts failed and
// dropped notifications.
func (m *Metrics) NotifyResult(webhook, result string) {
	if result == "failed" || result == "dropped" {
		m.notifyFailures.WithLabelValues(m.bounded("webhook", webhook), result).Inc()
	}
}

// EvidenceCaptured counts one evidence file.
func (m *Metrics) EvidenceCaptured(trigger string) {
	m.evidence.WithLabelValues(m.bounded("trigger", trigger)).Inc()
}

// Handler serves the registry.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{Registry: m.reg, MaxRequestsInFlight: 4, Timeout: 10 * time.Second})
}

// Listen opens the configured address.
func Listen(cfg Config) (net.Listener, error) {
	cfg = cfg.WithDefaults()
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return nil, fmt.Errorf("metrics listen: %w", err)
	}
	return ln, nil
}

// Serve serves path on ln until ctx ends.
func (m *Metrics) Serve(ctx context.Context, ln net.Listener, path string) error {
	if path == "" {
		path = "/metrics"
	}
	mux := http.NewServeMux()
	mux.Handle(path, m.Handler())
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second, ReadTimeout: 10 * time.Second,
		WriteTimeout: 15 * time.Second, IdleTimeout: time.Minute}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("metrics serve: %w", err)
	}
	return nil
}
