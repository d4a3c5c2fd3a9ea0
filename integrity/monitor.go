package integrity

import (
	"cmp"
	"context"
	"fmt"
	"hash/maphash"
	"log/slog"
	"maps"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// Options are a Monitor's injected dependencies.
type Options struct {
	// StateDir holds the baseline and its digest.
	StateDir string
	// WantDigest, when set, is the baseline digest the caller recorded in
	// its audit chain; a stored baseline with another digest is refused.
	WantDigest string
	// Report receives each new finding once. It is called with the
	// monitor locked, possibly from more than one goroutine at a time (a
	// full scan reports as it goes): it must be safe for concurrent use,
	// must not call back into the Monitor, and should return quickly.
	Report func(Finding)
	Logger *slog.Logger
	Now    func() time.Time
	// NewSource opens the file event source; nil means inotify via
	// fsnotify. Tests inject events through it.
	NewSource func() (EventSource, error)
	// LockWait is the longest a request (Status, Check, Accept, Baseline)
	// waits for the monitor when its context allows longer; then it gets
	// an error wrapping ErrBusy. Default DefaultLockWait.
	LockWait time.Duration
	// EventQueue bounds the file events queued between the event source
	// and the watcher loop; beyond it events are dropped and everything is
	// rescanned (as after a kernel overflow). Default DefaultEventQueue.
	EventQueue int
}

// Monitor owns the baseline, the scanner, the checker and the real-time
// watcher. All methods are safe for concurrent use.
type Monitor struct {
	cfg     Config
	opt     Options
	scanner *Scanner
	sel     *Selection
	checker *Checker
	log     *slog.Logger

	mu         opLock // requests wait for it at most Options.LockWait
	base       *Baseline
	digest     string
	loadErr    error                // why Load failed: given instead of ErrNoBaseline
	observed   map[string]Entry     // last state seen, where it differs from the baseline
	open       map[string][]Finding // current deviations per path
	openN      int                  // findings in open
	diffBytes  int                  // diff text in open
	diffBudget int                  // its bound: MaxOpenDiffBytes
	agg        *aggregator          // flood aggregation (burst findings)
	diff       *differ              // copies of accepted content, diffs
	st         stats
	w          *watchState // non-nil while Run runs
	att        *actors     // attribution table, while Run runs with fanotify
	attState   string      // "off", "on", "unavailable: why"

	warnedOutside bool // logged that baseline entries lie outside the selection

	seeds [2]maphash.Seed // of the paths a full check saw (pathSet)
}

type stats struct {
	lastScan     time.Time
	lastScanTook time.Duration
	lastScanFast bool      // the last full check was a fast one (metadata, see Scanner.scanEach)
	lastFull     time.Time // the last check that re-hashed everything
	events       uint64
	overflows    int
	watchFails   int
	rescans      int
	openDropped  uint64 // findings not kept open: max_open_findings reached
}

// NewMonitor builds a monitor for cfg. It does not touch the file system.
func NewMonitor(cfg Config, opt Options) (*Monitor, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	sc, err := NewScanner(cfg)
	if err != nil {
		return nil, err
	}
	rules, err := NewRules(cfg.Rules)
	if err != nil {
		return nil, err
	}
	if opt.Now == nil {
		opt.Now = time.Now
	}
	if opt.Logger == nil {
		opt.Logger = slog.New(slog.DiscardHandler)
	}
	if opt.LockWait <= 0 {
		opt.LockWait = DefaultLockWait
	}
	if opt.Report == nil {
		opt.Report = func(Finding) {}
	}
	m := &Monitor{cfg: cfg, opt: opt, scanner: sc, sel: sc.Selection(), log: opt.Logger,
		mu: newOpLock(), observed: map[string]Entry{}, open: map[string][]Finding{}, agg: newAggregator(cfg),
		diff: newDiffer(cfg, opt.StateDir, sc.hashOf), diffBudget: MaxOpenDiffBytes,
		seeds: [2]maphash.Seed{maphash.MakeSeed(), maphash.MakeSeed()}}
	m.checker = &Checker{Rules: rules, Now: opt.Now, MaxHash: sc.MaxHashSize()}
	if cfg.PackageManager == "dpkg" {
		m.checker.Dpkg = NewDpkg(cfg.PackageRoot, m.sel)
	}
	return m, nil
}

// Config returns the effective configuration (defaults applied).
// A reload (Reconfigure) changes it; it is read under the monitor's lock.
func (m *Monitor) Config() Config {
	m.mu.Lock("config")
	defer m.mu.Unlock()
	return m.cfg
}

// Load reads the stored baseline, refusing one whose digest does not match
// (ErrBaselineTampered) — it is then not used. ErrNoBaseline when none.
func (m *Monitor) Load() (string, error) {
	// The package sums first: reading dpkg's lists makes garbage (the
	// whole database is read to keep the selected part) that is better
	// collected before the baseline is in memory than on top of it.
	relax := tightGC()
	m.checker.Dpkg.Len()
	relax()
	b, digest, err := LoadBaseline(m.opt.StateDir, m.opt.WantDigest)
	if err != nil {
		m.mu.Lock("load baseline")
		m.loadErr = err
		m.mu.Unlock()
		return digest, err
	}
	if b.Algo != m.scanner.Algo() {
		return digest, fmt.Errorf("load baseline: recorded with %s, configured %s: record a new baseline", b.Algo, m.scanner.Algo())
	}
	m.mu.Lock("load baseline")
	defer m.mu.Unlock()
	m.setBaseline(b, digest)
	return digest, nil
}

func (m *Monitor) setBaseline(b *Baseline, digest string) {
	m.base, m.digest, m.loadErr = b, digest, nil
	m.opt.WantDigest = digest
	clear(m.observed)
	clear(m.open)
	m.openN = 0
	m.diffBytes = 0
	m.agg.reset()
	m.st.openDropped = 0
}

// BaselineResult describes a recorded baseline.
type BaselineResult struct {
	Digest     string        `json:"digest"`
	Entries    int           `json:"entries"`
	Unreadable []string      `json:"unreadable,omitempty"`
	Took       time.Duration `json:"took_ns"`
}

// Baseline scans the selection now, stores it as the new baseline and
// returns its digest (for the caller's audit chain).
func (m *Monitor) Baseline(ctx context.Context) (BaselineResult, error) {
	if err := m.mu.LockContext(ctx, "baseline", m.opt.LockWait); err != nil {
		return BaselineResult{}, err
	}
	defer m.mu.Unlock()
	start := time.Now()
	ents, err := m.scanWatching(ctx)
	if err != nil {
		return BaselineResult{}, err
	}
	// Rules hold from the start: remediate before recording, and report
	// what was put back.
	paths := slices.Sorted(maps.Keys(ents))
	for _, p := range paths {
		fs, after := m.checker.Rules.Check(p, ents[p], m.opt.Now())
		ents[p] = after
		for _, f := range fs {
			if f.Remediation != "" {
				m.report(f)
			}
		}
	}
	b := &Baseline{Algo: m.scanner.Algo(), Created: m.opt.Now().UTC(), Entries: ents}
	digest, err := SaveBaseline(m.opt.StateDir, b)
	if err != nil {
		return BaselineResult{}, err
	}
	m.setBaseline(b, digest)
	if n := m.diff.take(ents, nil, m.opt.Now()); n > 0 {
		m.log.Info("integrity: content of some files selected by integrity.diff not kept; their changes come without a diff", "files", n)
	}
	res := BaselineResult{Digest: digest, Entries: len(ents), Took: time.Since(start)}
	for _, p := range paths {
		if ents[p].Err != "" {
			res.Unreadable = append(res.Unreadable, p)
		}
		m.evaluate(p, ents[p], true) // violations not remediated
	}
	return res, nil
}

// Check compares the whole selection with the baseline now and returns
// every current deviation (reporting only those not reported before).
func (m *Monitor) Check(ctx context.Context) ([]Finding, error) {
	if err := m.mu.LockContext(ctx, "check", m.opt.LockWait); err != nil {
		return nil, err
	}
	defer m.mu.Unlock()
	if err := m.fullRescan(ctx, true, false); err != nil {
		return nil, err
	}
	return m.openLocked(), nil
}

// FastCheck is Check as the scheduled checks between full ones do it: only
// the files whose inode, size, mtime or ctime differ from their last state
// are re-read and re-hashed (see docs/integrity.md for what this cannot
// see).
func (m *Monitor) FastCheck(ctx context.Context) ([]Finding, error) {
	if err := m.mu.LockContext(ctx, "check", m.opt.LockWait); err != nil {
		return nil, err
	}
	defer m.mu.Unlock()
	if err := m.fullRescan(ctx, false, true); err != nil {
		return nil, err
	}
	return m.openLocked(), nil
}

// Accept takes the current state of paths (directories with everything
// below them) into the baseline, stores it and returns the new digest.
func (m *Monitor) Accept(ctx context.Context, paths []string) (string, error) {
	if err := m.mu.LockContext(ctx, "accept", m.opt.LockWait); err != nil {
		return "", err
	}
	defer m.mu.Unlock()
	if m.base == nil {
		return "", m.noBaseline()
	}
	for _, p := range paths {
		if !filepath.IsAbs(p) || filepath.Clean(p) != p {
			return "", fmt.Errorf("accept %q: want an absolute, clean path", p)
		}
		if _, known := m.base.Entries[p]; !known && !m.sel.Selected(p) {
			return "", fmt.Errorf("accept %q: not in the integrity selection", p)
		}
	}
	ents := maps.Clone(m.base.Entries)
	for _, p := range paths {
		for q := range ents {
			if q == p || strings.HasPrefix(q, p+"/") {
				delete(ents, q)
			}
		}
		cur, err := m.scanner.ScanTree(ctx, p, nil)
		if err != nil {
			return "", err
		}
		for q, e := range cur {
			ents[q] = e
		}
	}
	b := &Baseline{Algo: m.base.Algo, Created: m.opt.Now().UTC(), Entries: ents}
	digest, err := SaveBaseline(m.opt.StateDir, b)
	if err != nil {
		return "", err
	}
	m.base, m.digest, m.opt.WantDigest = b, digest, digest
	m.diff.take(ents, func(q string) bool {
		for _, p := range paths {
			if q == p || strings.HasPrefix(q, p+"/") {
				return true
			}
		}
		return false
	}, m.opt.Now())
	for _, p := range paths {
		for q := range m.open {
			if q == p || strings.HasPrefix(q, p+"/") {
				m.setOpen(q, nil)
				delete(m.observed, q)
			}
		}
		for q := range m.observed {
			if q == p || strings.HasPrefix(q, p+"/") {
				delete(m.observed, q) // folded into a burst: no open finding of its own
			}
		}
		m.agg.dropBurstsBelow(p)
	}
	return digest, nil
}

// Status is what `parry integrity status` shows.
type Status struct {
	Roots           []string      `json:"roots"`
	Running         bool          `json:"running"`
	Watches         int           `json:"watches"`
	WatchFailures   int           `json:"watch_failures"`
	BaselineDigest  string        `json:"baseline_digest,omitempty"`
	BaselineTime    time.Time     `json:"baseline_time,omitzero"`
	BaselineEntries int           `json:"baseline_entries"`
	LastScan        time.Time     `json:"last_scan,omitzero"`
	LastScanTook    time.Duration `json:"last_scan_took_ns"`
	// LastScanFast says the last check re-hashed only what changed by
	// its metadata; LastFullScan is the last one that re-hashed everything.
	LastScanFast bool      `json:"last_scan_fast"`
	LastFullScan time.Time `json:"last_full_scan,omitzero"`
	Events       uint64    `json:"events"`
	Overflows    int       `json:"overflows"`
	Rescans      int       `json:"rescans"`
	Hash         string    `json:"hash"`
	Open         []Finding `json:"open"`
	// MaxOpenFindings is integrity.max_open_findings; OpenDropped counts
	// the findings reported but not kept open because it was reached.
	MaxOpenFindings int    `json:"max_open_findings"`
	OpenDropped     uint64 `json:"open_dropped"`
	// Aggregated counts the findings folded into burst findings (a flood
	// of new files) since the baseline, instead of being recorded one by
	// one.
	Aggregated uint64 `json:"aggregated"`
	// Copies and CopiesBytes are the files whose accepted content is kept
	// for diffs (integrity.diff) and their compressed size; CopiesDropped
	// counts the copies dropped since start to stay under MaxCopyTotal.
	Copies        int    `json:"copies"`
	CopiesBytes   int64  `json:"copies_bytes"`
	CopiesDropped uint64 `json:"copies_dropped"`
	// Attribution is "off" (integrity.attribution false), "on", or
	// "unavailable: <why>" (then findings come without an actor);
	// AttributionEvents counts the fanotify events read.
	Attribution       string `json:"attribution"`
	AttributionEvents uint64 `json:"attribution_events"`
}

// Status reports the monitor's state and open findings. It waits for the
// monitor until ctx ends or Options.LockWait passes (ErrBusy).
func (m *Monitor) Status(ctx context.Context) (Status, error) {
	if err := m.mu.LockContext(ctx, "status", m.opt.LockWait); err != nil {
		return Status{}, err
	}
	defer m.mu.Unlock()
	s := Status{Roots: m.sel.Roots(), Running: m.w != nil, Hash: m.scanner.Algo(), Open: m.openLocked(),
		LastScan: m.st.lastScan, LastScanTook: m.st.lastScanTook, LastScanFast: m.st.lastScanFast, LastFullScan: m.st.lastFull, Events: m.st.events,
		Overflows: m.st.overflows, Rescans: m.st.rescans, WatchFailures: m.st.watchFails, BaselineDigest: m.digest,
		MaxOpenFindings: m.cfg.MaxOpenFindings, OpenDropped: m.st.openDropped, Aggregated: m.agg.count}
	s.Attribution = cmp.Or(m.attState, "off")
	if m.att != nil {
		m.att.mu.Lock()
		s.AttributionEvents = m.att.events
		m.att.mu.Unlock()
	}
	m.diff.store.load()
	s.Copies, s.CopiesBytes, s.CopiesDropped = len(m.diff.store.index), m.diff.store.total, m.diff.store.dropped
	if m.base != nil {
		s.BaselineTime, s.BaselineEntries = m.base.Created, len(m.base.Entries)
	}
	if m.w != nil {
		s.Watches = len(m.w.watched)
	}
	return s, nil
}

func (m *Monitor) openLocked() []Finding {
	out := make([]Finding, 0, m.openN+len(m.agg.open))
	for _, p := range slices.Sorted(maps.Keys(m.open)) {
		out = append(out, m.open[p]...)
	}
	for _, d := range slices.Sorted(maps.Keys(m.agg.open)) {
		out = append(out, m.agg.open[d])
	}
	return out
}

// setOpen records fs as the open findings of path (none: nil), keeping
// at most max_open_findings: findings of a path not open yet that would
// exceed it are not kept, only counted. It reports whether fs is kept.
func (m *Monitor) setOpen(path string, fs []Finding) bool {
	old := len(m.open[path])
	oldDiff := diffSize(m.open[path])
	if len(fs) == 0 {
		if old > 0 {
			delete(m.open, path)
			m.openN -= old
			m.diffBytes -= oldDiff
		}
		return true
	}
	if old == 0 && m.openN+len(fs) > m.cfg.MaxOpenFindings {
		m.st.openDropped += uint64(len(fs))
		return false
	}
	newDiff := diffSize(fs)
	if m.diffBytes-oldDiff+newDiff > m.diffBudget {
		for i := range fs {
			fs[i] = cutDiff(fs[i]) // over the budget: keep what a report keeps
		}
		newDiff = diffSize(fs)
	}
	m.open[path] = fs
	m.openN += len(fs) - old
	m.diffBytes += newDiff - oldDiff
	return true
}

// evaluate judges path in state cur and reports what is new. Unless force,
// a state equal to the last one seen is skipped (its verdict was given).
func (m *Monitor) evaluate(path string, cur Entry, force bool) {
	base := m.base.Entries[path]
	prev, seen := m.observed[path]
	if !seen {
		prev = base
	}
	if !force && prev == cur {
		return
	}
	fs, after := m.checker.Judge(path, base, cur)
	for i := range fs {
		if fs[i].Path == path && fs[i].Kind != KindPermission {
			m.diff.explain(&fs[i], &base, &cur)
		}
		if fs[i].Path == path {
			fs[i].Actor = m.actorFor(path)
		}
	}
	if after == base {
		delete(m.observed, path)
	} else {
		m.observed[path] = after
	}
	old := m.open[path]
	if len(fs) == 0 {
		if len(old) > 0 {
			m.setOpen(path, nil)
			m.report(Finding{Time: m.opt.Now(), Kind: KindRestored, Severity: SevLow, Path: path,
				Detail: "back to its baseline state", Actor: m.actorFor(path)})
		}
		return
	}
	// New files, and new states of files not in the baseline, count
	// against their directory's burst threshold (a user rewriting many
	// files of their own must not fill the audit log either).
	if foldable(fs) && (len(old) == 0 || foldable(old)) {
		if len(old) == 0 && seen && prev == cur {
			return // folded before (forced re-check): its burst finding stands for it
		}
		if m.fold(path, fs) {
			return // reported with its directory's burst finding
		}
	}
	m.setOpen(path, fs)
	for _, f := range fs {
		if !slices.ContainsFunc(old, func(o Finding) bool { return sameFinding(o, f) }) {
			m.report(f)
		}
	}
}

// actorFor is the latest process seen changing path recently enough to
// have caused what is being judged now: within the longest debounce
// delay and a second of slack.
func (m *Monitor) actorFor(path string) *Actor {
	if m.att == nil || m.w == nil {
		return nil
	}
	return m.att.latest(path, time.Now().Add(-m.w.maxDelay-m.cfg.Debounce.D()-time.Second))
}

func sameFinding(a, b Finding) bool {
	return a.Kind == b.Kind && a.Rule == b.Rule && a.Detail == b.Detail
}

func (m *Monitor) report(f Finding) {
	m.log.Debug("integrity finding", "kind", f.Kind, "severity", f.Severity, "path", f.Path, "detail", f.Detail)
	m.opt.Report(cutDiff(f))
}

// reportEvent reports a watcher condition (overflow, watch limit) that is
// not about one file's state.
func (m *Monitor) reportEvent(kind, sev, path, detail string) {
	m.report(Finding{Time: m.opt.Now(), Kind: kind, Severity: sev, Path: path, Detail: detail})
}

// scanWatching scans the selection, adding watches for directories when
// the watcher runs.
func (m *Monitor) scanWatching(ctx context.Context) (map[string]Entry, error) {
	start := time.Now()
	var onDir func(string)
	if m.w != nil {
		onDir = m.w.watchDir
	}
	ents, err := m.scanner.scan(ctx, m.sel.Roots(), onDir)
	if err != nil {
		return nil, err
	}
	m.st.lastScan, m.st.lastScanTook, m.st.lastScanFast = m.opt.Now(), time.Since(start), false
	m.st.lastFull = m.st.lastScan
	return ents, nil
}

// fullRescan scans everything and evaluates every path known from the
// baseline, earlier observations, or the scan. Entries are judged as they
// come (no second copy of the whole tree in memory); what was not seen is
// judged absent afterwards. A fast one re-reads only the paths whose
// metadata differs from their last state (Scanner.scanEach).
func (m *Monitor) fullRescan(ctx context.Context, force, fast bool) error {
	if m.base == nil {
		return m.noBaseline()
	}
	defer tightGC()()
	start := time.Now()
	var onDir func(string)
	if m.w != nil {
		onDir = m.w.watchDir
	}
	var prev Previous
	if fast {
		// The workers look states up while this goroutine's evaluate
		// records new ones: they read a copy (usually small: the paths
		// that differ from the baseline).
		obs, base := maps.Clone(m.observed), m.base.Entries
		prev = func(p string) (Entry, bool) {
			if e, ok := obs[p]; ok {
				return e, true
			}
			e, ok := base[p]
			return e, ok
		}
	}
	seen := newPathSet(&m.seeds, len(m.base.Entries)+len(m.observed)+1024)
	dirs := map[string]bool{}
	err := m.scanner.scanEach(ctx, m.sel.Roots(), onDir, prev, func(r Result) {
		seen.add(r.Path)
		if r.Entry.Type == TypeDir {
			dirs[r.Path] = true
		}
		m.evaluate(r.Path, r.Entry, force)
	})
	if err != nil {
		return err
	}
	seen.seal()
	m.st.lastScan, m.st.lastScanTook, m.st.lastScanFast = m.opt.Now(), time.Since(start), fast
	if !fast {
		m.st.lastFull = m.st.lastScan
	}
	m.st.rescans++
	var gone []string
	outside := 0
	for p := range m.base.Entries {
		if seen.has(p) {
			continue
		}
		if !m.sel.Selected(p) {
			// Recorded under paths or excludes configured before: it left
			// the selection, it was not removed.
			outside++
			continue
		}
		gone = append(gone, p)
	}
	if outside > 0 && !m.warnedOutside {
		m.warnedOutside = true
		m.log.Warn("integrity baseline has entries outside the configured paths (integrity.paths or excludes changed?); they are ignored: run 'parry integrity baseline' to record the new selection", "entries", outside)
	}
	for p := range m.observed {
		if !seen.has(p) && m.base.Entries[p].Type == TypeNone {
			gone = append(gone, p)
		}
	}
	slices.Sort(gone)
	for _, p := range gone {
		m.evaluate(p, Entry{}, force)
	}
	m.flushBursts(true)
	m.dropStaleBursts()
	if m.w != nil {
		for d := range m.w.watched {
			if !dirs[d] {
				m.w.unwatchTree(d)
			}
		}
	}
	return nil
}

// noBaseline is the error for "no usable baseline": the load error if
// loading failed (tampering), else ErrNoBaseline.
func (m *Monitor) noBaseline() error {
	if m.loadErr != nil {
		return m.loadErr
	}
	return ErrNoBaseline
}

// pathSet is the set of paths a full check saw, kept as a sorted slice of
// a 128-bit keyed hash of each path instead of the paths: for the 100,000
// paths of a large selection that is 1.6 MB, where a map of the scanner's
// strings kept 9 MB alive until the check ended. The two seeds are the
// monitor's, random per process, so no file name can be chosen to make a
// collision (a removed file taken for seen; by chance about n²/2¹²⁹).
type pathSet struct {
	seeds *[2]maphash.Seed
	keys  [][2]uint64
}

func newPathSet(seeds *[2]maphash.Seed, n int) *pathSet {
	return &pathSet{seeds: seeds, keys: make([][2]uint64, 0, n)}
}

func (s *pathSet) key(p string) [2]uint64 {
	return [2]uint64{maphash.String(s.seeds[0], p), maphash.String(s.seeds[1], p)}
}

// add records p; call seal before has.
func (s *pathSet) add(p string) { s.keys = append(s.keys, s.key(p)) }

func (s *pathSet) seal() {
	slices.SortFunc(s.keys, func(a, b [2]uint64) int { return cmp.Or(cmp.Compare(a[0], b[0]), cmp.Compare(a[1], b[1])) })
}

func (s *pathSet) has(p string) bool {
	_, ok := slices.BinarySearchFunc(s.keys, s.key(p), func(a, b [2]uint64) int {
		return cmp.Or(cmp.Compare(a[0], b[0]), cmp.Compare(a[1], b[1]))
	})
	return ok
}
