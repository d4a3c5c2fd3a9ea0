package integrity

import (
	"fmt"
	"maps"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// A flood of new files (a user creating 200,000 files in a watched tree)
// must not become 200,000 findings, audit lines and signals. Within one
// burst_interval, the first burst_threshold `added` findings of a directory
// are reported one by one; the rest are folded into one `burst` finding per
// directory and interval ("N files created under DIR", with a bounded
// sample of names), reported when the interval ends. Folded paths keep no
// open finding of their own: the directory's burst finding stands for them
// until they are accepted or gone, and while it is open every new one in
// that directory is folded at once (a flood that lasts does not report
// burst_threshold more files each interval). Across all directories at most
// globalBurstFactor × burst_threshold findings are reported one by one per
// interval; beyond that, and for the whole next interval when that many
// came in the last one, they are folded under their selection root, so
// that a flood spread over many directories is bounded too.

// Defaults of the flood limits.
const (
	DefaultBurstThreshold  = 100
	DefaultBurstInterval   = 10 * time.Second
	DefaultMaxOpenFindings = 10000

	burstSample       = 10 // names kept per burst finding
	globalBurstFactor = 10
)

// burstWindow counts one directory's (or the whole monitor's) individual
// reports in the current interval, and what was folded meanwhile.
type burstWindow struct {
	start  time.Time
	n      int      // reported one by one in this window
	seen   int      // global window: every foldable finding in it
	folded int      // folded since the last flush
	sample []string // names of the first folded paths
	sev    string   // highest severity folded
}

type aggregator struct {
	threshold int
	interval  time.Duration
	global    burstWindow
	hot       bool                    // the last interval had a global flood: fold everything by root
	dirs      map[string]*burstWindow // by directory (or root, when folded globally)
	open      map[string]Finding      // the open burst finding per directory
	total     map[string]int          // paths folded under each open burst finding
	count     uint64                  // findings folded since the baseline
}

func newAggregator(cfg Config) *aggregator {
	return &aggregator{threshold: cfg.BurstThreshold, interval: *cfg.BurstInterval,
		dirs: map[string]*burstWindow{}, open: map[string]Finding{}, total: map[string]int{}}
}

func (a *aggregator) reset() {
	a.global, a.hot = burstWindow{}, false
	clear(a.dirs)
	clear(a.open)
	clear(a.total)
	a.count = 0
}

// foldable says whether fs, the findings of a path new since the baseline,
// may be folded into a burst: only `added` (and its package_update form)
// and below critical. A critical finding (a new setuid file) is always
// reported on its own.
func foldable(fs []Finding) bool {
	for _, f := range fs {
		if (f.Kind != KindAdded && f.Kind != KindPackage) || f.Severity == SevCritical {
			return false
		}
	}
	return len(fs) > 0
}

// fold decides whether the findings of path are reported one by one
// (false) or folded into its directory's burst (true), counting them.
func (m *Monitor) fold(path string, fs []Finding) bool {
	a := m.agg
	now := m.opt.Now()
	limit := globalBurstFactor * a.threshold
	if since := now.Sub(a.global.start); since >= a.interval {
		a.hot = a.global.seen >= limit && since < 2*a.interval
		a.global = burstWindow{start: now}
	}
	a.global.seen++
	overGlobal := a.hot || a.global.n >= limit
	key := filepath.Dir(path)
	if overGlobal {
		key = m.rootOf(path) // a flood over many directories: fold by root
	}
	w := a.dirs[key]
	if w == nil || (w.folded == 0 && now.Sub(w.start) >= a.interval) {
		w = &burstWindow{start: now}
		a.dirs[key] = w
	}
	if _, burst := a.open[key]; !overGlobal && !burst && w.n < a.threshold {
		w.n++
		a.global.n++
		return false
	}
	w.folded++
	a.count++
	if len(w.sample) < burstSample {
		w.sample = append(w.sample, clip(strings.TrimPrefix(path, key+"/"), 256))
	}
	for _, f := range fs {
		if sevRank(f.Severity) > sevRank(w.sev) {
			w.sev = f.Severity
		}
	}
	return true
}

// rootOf is the selection root path lies under (the longest one).
func (m *Monitor) rootOf(path string) string {
	best := filepath.Dir(path)
	n := -1
	for _, r := range m.sel.Roots() {
		if _, ok := under(r, path); ok && len(r) > n {
			best, n = r, len(r)
		}
	}
	return best
}

func sevRank(s string) int {
	return slices.Index([]string{SevLow, SevMedium, SevHigh, SevCritical}, s)
}

// flushBursts reports, for every directory whose interval has ended (all
// of them when all), one burst finding for what was folded, and keeps it
// open in place of the folded paths' own findings.
func (m *Monitor) flushBursts(all bool) {
	a := m.agg
	now := m.opt.Now()
	for _, key := range slices.Sorted(maps.Keys(a.dirs)) {
		w := a.dirs[key]
		if !all && now.Sub(w.start) < a.interval {
			continue
		}
		delete(a.dirs, key)
		if w.folded == 0 {
			continue
		}
		a.total[key] += w.folded
		more := ""
		if w.folded > len(w.sample) {
			more = ", …"
		}
		f := Finding{Time: now, Kind: KindBurst, Severity: w.sev, Path: key, Count: w.folded,
			Detail: fmt.Sprintf("%d files created (or rewritten, when new since the baseline) under %s within %s (%d in all while open); first: %s%s; their findings are aggregated here, not recorded one by one",
				w.folded, key, a.interval, a.total[key], strings.Join(w.sample, ", "), more)}
		a.open[key] = f
		m.report(f)
	}
}

// dropBurstsBelow forgets the open burst findings at or below p (accepted).
func (a *aggregator) dropBurstsBelow(p string) {
	for d := range a.open {
		if d == p || strings.HasPrefix(d, p+"/") {
			delete(a.open, d)
			delete(a.total, d)
		}
	}
}

// dropStaleBursts closes the burst findings of directories with nothing
// left below them that differs from the baseline (after a full rescan).
func (m *Monitor) dropStaleBursts() {
	a := m.agg
	if len(a.open) == 0 {
		return
	}
	live := map[string]bool{}
	for p := range m.observed {
		for d := filepath.Dir(p); ; d = filepath.Dir(d) {
			if _, ok := a.open[d]; ok {
				live[d] = true
			}
			if d == "/" || d == "." {
				break
			}
		}
	}
	for d := range a.open {
		if !live[d] {
			delete(a.open, d)
			delete(a.total, d)
			m.report(Finding{Time: m.opt.Now(), Kind: KindRestored, Severity: SevLow, Path: d,
				Detail: "nothing left of the files created here"})
		}
	}
}
