package integrity

import (
	"context"
	"reflect"
	"slices"
	"time"
)

// Reconfigure switches the monitor to cfg in place (a config reload),
// without stopping the watcher: the watches, the debounced events pending,
// the findings open and the states observed stay. It swaps the selection
// (paths, excludes), the permission rules, the scanner's knobs (workers,
// nice, io_rate, max_hash_size), package awareness, the diff selection,
// debounce, the flood
// bounds and the scan intervals; then, when the watcher runs, a fast check
// (force: every state is judged again) adds watches for new directories,
// drops those of directories that left the selection, and applies the new
// rules to every file. Findings of paths that left the selection are
// closed. It returns the keys that can change only with a restart (hash:
// the baseline was recorded with the old one; enabled: the glue's;
// attribution: fanotify is set up when the watcher starts); they
// keep their old values. It waits for the monitor as a request does
// (ErrBusy), and nothing changes when it fails.
//
// Why in place and not a new monitor handed the old one's state: that state
// is the inotify instance with its watches, the pending events, the open
// findings, the observed states and the flood windows, all under this
// monitor's lock; swapping the configuration under that lock is atomic
// for the watcher loop (it holds the same lock for every batch of events),
// needs no second inotify instance and leaves no window in which an event
// goes to neither.
func (m *Monitor) Reconfigure(ctx context.Context, cfg Config) ([]string, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	var restart []string
	if cfg.Hash != m.cfg.Hash {
		restart = append(restart, "integrity.hash")
		cfg.Hash = m.cfg.Hash
	}
	if *cfg.Enabled != *m.cfg.Enabled {
		restart = append(restart, "integrity.enabled")
		cfg.Enabled = m.cfg.Enabled
	}
	if (cfg.Attribution != nil && *cfg.Attribution) != (m.cfg.Attribution != nil && *m.cfg.Attribution) {
		restart = append(restart, "integrity.attribution") // fanotify is set up when the watcher starts
		cfg.Attribution = m.cfg.Attribution
	}
	sc, err := NewScanner(cfg)
	if err != nil {
		return nil, err
	}
	rules, err := NewRules(cfg.Rules)
	if err != nil {
		return nil, err
	}
	if err := m.mu.LockContext(ctx, "reload", m.opt.LockWait); err != nil {
		return nil, err
	}
	defer m.mu.Unlock()
	old := m.cfg
	m.cfg, m.scanner, m.sel = cfg, sc, sc.Selection()
	checker := &Checker{Rules: rules, Now: m.opt.Now, MaxHash: sc.MaxHashSize(), Dpkg: m.checker.Dpkg}
	if cfg.PackageManager != old.PackageManager || cfg.PackageRoot != old.PackageRoot ||
		!reflect.DeepEqual(cfg.Paths, old.Paths) || !slices.Equal(cfg.Exclude, old.Exclude) {
		checker.Dpkg = nil
		if cfg.PackageManager == "dpkg" {
			checker.Dpkg = NewDpkg(cfg.PackageRoot, m.sel)
		}
	}
	m.checker = checker
	if !slices.Equal(cfg.Diff, old.Diff) || !reflect.DeepEqual(cfg.Rules, old.Rules) {
		// What may be kept and shown changed (a rule may mark a file
		// secret now): a new differ, whose store drops the copies it may
		// not keep when it loads.
		m.diff = newDiffer(cfg, m.opt.StateDir, sc.hashOf)
	}
	m.agg.threshold, m.agg.interval = cfg.BurstThreshold, *cfg.BurstInterval
	m.warnedOutside = false // say again if the baseline has entries outside the new selection
	for p := range m.open {
		if !m.sel.Selected(p) {
			m.setOpen(p, nil)
			delete(m.observed, p)
		}
	}
	for p := range m.observed {
		if !m.sel.Selected(p) {
			delete(m.observed, p)
		}
	}
	if m.w == nil || m.base == nil {
		return restart, nil
	}
	ws := m.w
	ws.maxDelay = max(10*cfg.Debounce.D(), 500*time.Millisecond)
	select {
	case ws.reconf <- struct{}{}: // the loop re-arms its tickers
	default:
	}
	m.checker.Dpkg.Len() // read the package sums now, not on the first change
	ws.watchFileRoots()
	// ctx bounded the wait for the lock; the check itself is not cut short.
	if err := m.fullRescan(context.WithoutCancel(ctx), true, true); err != nil {
		m.log.Warn("integrity reload: check of the new selection", "err", err)
	}
	return restart, nil
}
