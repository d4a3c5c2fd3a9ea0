package integrity

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/fsnotify/fsnotify"
	"golang.org/x/sys/unix"
)

// EventSource is where file events come from: inotify through fsnotify in
// production, injected events in tests.
type EventSource interface {
	Add(dir string) error
	Remove(dir string) error
	Events() <-chan fsnotify.Event
	Errors() <-chan error
	Close() error
}

type fsnotifySource struct{ w *fsnotify.Watcher }

// NewInotifySource opens an fsnotify watcher with a buffered event channel.
func NewInotifySource() (EventSource, error) {
	w, err := fsnotify.NewBufferedWatcher(4096)
	if err != nil {
		return nil, fmt.Errorf("inotify: %w", err)
	}
	return fsnotifySource{w}, nil
}

func (s fsnotifySource) Add(dir string) error          { return s.w.Add(dir) }
func (s fsnotifySource) Remove(dir string) error       { return s.w.Remove(dir) }
func (s fsnotifySource) Events() <-chan fsnotify.Event { return s.w.Events }
func (s fsnotifySource) Errors() <-chan error          { return s.w.Errors }
func (s fsnotifySource) Close() error                  { return s.w.Close() }

// watchState is the watcher's state; the Monitor's lock guards it.
type watchState struct {
	m        *Monitor
	src      EventSource
	watched  map[string]bool // directories with a watch
	parents  map[string]bool // parents watched for roots that are files
	failed   map[string]bool // directories whose watch could not be added
	pending  map[string]pend
	reconf   chan struct{} // cap 1: Reconfigure changed the intervals
	timer    *time.Timer
	armed    bool
	maxDelay time.Duration

	errLogged time.Time // last source error logged (at most one a minute)
	errQuiet  int       // source errors not logged since
}

type pend struct{ first, due time.Time }

// Run watches the selection until ctx ends: first a full check (catching
// what changed while nothing watched), then events, debounced per path,
// each answered by re-stat'ing and re-hashing the path; and a full check
// every scan_interval and after an event overflow.
//
// Why this cannot deadlock against fsnotify: fsnotify's reader goroutine
// sends some errors while it holds the lock that Add and Remove take (an
// IN_MOVE_SELF on a directory already gone). If the goroutine that calls
// Add/Remove were also the one receiving from fsnotify's channels, each
// would wait for the other forever — which is what a directory renamed
// away and replaced by a symlink did. So the channels are drained by a
// goroutine of their own (pump) that never calls into fsnotify and never
// waits on anything but those channels and the short lock of its queue;
// the loop below, which adds and removes watches, reads from that queue.
// The queue is bounded (Options.EventQueue): when it is full, events are
// dropped and the loop rescans everything, as after a kernel overflow.
func (m *Monitor) Run(ctx context.Context) error {
	newSrc := m.opt.NewSource
	if newSrc == nil {
		newSrc = NewInotifySource
	}
	src, err := newSrc()
	if err != nil {
		return err
	}
	var cfg Config // a reload may swap m.cfg meanwhile: read it under the lock
	m.locked("start watcher", func() { cfg = m.cfg })
	attState, att := "off", (*actors)(nil)
	if *cfg.Attribution {
		if fa, err := newFanotifySource(src, m.log); err != nil {
			m.log.Warn("integrity attribution unavailable: changes come without the process behind them", "err", err)
			attState = "unavailable: " + err.Error()
		} else {
			src, attState, att = fa, "on", fa.table
		}
	}
	q := newEventQueue(cmp.Or(m.opt.EventQueue, DefaultEventQueue))
	pumped, stop := make(chan struct{}), make(chan struct{})
	go func() { defer close(pumped); q.pump(src, stop) }()
	defer func() { src.Close(); close(stop); <-pumped }()
	ws := &watchState{m: m, src: src, watched: map[string]bool{}, parents: map[string]bool{},
		failed: map[string]bool{}, pending: map[string]pend{}, reconf: make(chan struct{}, 1), timer: time.NewTimer(time.Hour),
		maxDelay: max(10*cfg.Debounce.D(), 500*time.Millisecond)}
	ws.timer.Stop()
	defer ws.timer.Stop()

	m.mu.Lock("start watcher")
	if m.base == nil {
		m.mu.Unlock()
		return ErrNoBaseline
	}
	m.w, m.att, m.attState = ws, att, attState
	relax := tightGC()
	m.checker.Dpkg.Len() // read the package sums now, not on the first change
	ws.watchFileRoots()
	err = m.fullRescan(ctx, true, false)
	relax()
	m.mu.Unlock()
	defer func() {
		m.mu.Lock("stop watcher")
		m.w, m.att = nil, nil
		m.mu.Unlock()
	}()
	if err != nil {
		return err
	}
	var tick <-chan time.Time
	var ticker *time.Ticker
	defer func() {
		if ticker != nil {
			ticker.Stop()
		}
	}()
	var scanIv, burstIv time.Duration
	arm := func() { // the scheduled checks' ticker, after a start or a reload
		if iv := m.cfg.ScanInterval.D(); iv != scanIv {
			if ticker != nil {
				ticker.Stop()
			}
			ticker, tick, scanIv = nil, nil, iv
			if iv > 0 {
				ticker = time.NewTicker(iv)
				tick = ticker.C
			}
		}
	}
	m.locked("start watcher", func() { arm(); burstIv = *m.cfg.BurstInterval })
	bursts := time.NewTicker(burstIv)
	defer bursts.Stop()
	var batch []queued
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-ws.reconf:
			m.locked("reload", func() {
				arm()
				if iv := *m.cfg.BurstInterval; iv != burstIv {
					burstIv = iv
					bursts.Reset(iv)
				}
			})
		case <-q.ready:
			var lost, closed bool
			batch, lost, closed = q.take(batch[:0])
			m.locked("events", func() {
				for _, it := range batch {
					if it.err != nil {
						ws.onError(ctx, it.err)
					} else {
						ws.onEvent(ctx, it.ev)
					}
				}
				if lost {
					ws.onError(ctx, errQueueOverflow)
				}
			})
			clear(batch)
			if closed {
				return errors.New("integrity watcher: event source closed")
			}
		case <-ws.timer.C:
			m.locked("debounced checks", func() { ws.armed = false; ws.fire(ctx) })
		case <-bursts.C:
			m.locked("burst findings", func() { m.flushBursts(false) })
		case <-tick:
			m.locked("scheduled check", func() {
				if err := m.fullRescan(ctx, false, !m.fullDue()); err != nil {
					m.log.Warn("integrity scheduled check", "err", err)
				}
			})
		}
	}
}

// DefaultEventQueue bounds the events (and errors) waiting between
// fsnotify and the watcher loop: about 100 bytes each plus the name.
const DefaultEventQueue = 65536

// errQueueOverflow stands for events dropped from the watcher's own queue:
// handled like the kernel's overflow (a full rescan).
var errQueueOverflow = fmt.Errorf("integrity watcher queue full: %w", fsnotify.ErrEventOverflow)

// queued is one event or error taken from the source.
type queued struct {
	ev  fsnotify.Event
	err error
}

// eventQueue carries events from pump to the watcher loop. Its lock is
// held only to append or to swap the slice out, never around a call.
type eventQueue struct {
	mu     sync.Mutex
	items  []queued
	limit  int
	lost   bool // items were dropped since the last take
	closed bool
	ready  chan struct{} // cap 1: something to take
}

func newEventQueue(limit int) *eventQueue {
	return &eventQueue{limit: limit, ready: make(chan struct{}, 1)}
}

// pump drains src's channels until both are closed (src.Close) or stop
// is. It never calls into src.
func (q *eventQueue) pump(src EventSource, stop <-chan struct{}) {
	evs, errs := src.Events(), src.Errors()
	for evs != nil || errs != nil {
		var it queued
		select {
		case <-stop:
			return
		case ev, ok := <-evs:
			if !ok {
				evs = nil
				continue
			}
			it.ev = ev
		case err, ok := <-errs:
			if !ok {
				errs = nil
				continue
			}
			it.err = err
		}
		q.put(it)
	}
	q.mu.Lock()
	q.closed = true
	q.mu.Unlock()
	q.poke()
}

func (q *eventQueue) put(it queued) {
	q.mu.Lock()
	if len(q.items) < q.limit {
		q.items = append(q.items, it)
	} else {
		q.lost = true
	}
	q.mu.Unlock()
	q.poke()
}

func (q *eventQueue) poke() {
	select {
	case q.ready <- struct{}{}:
	default:
	}
}

// take moves what is queued into buf (swapping slices, so the queue's lock
// is held for no copy) and says whether items were lost meanwhile and
// whether the source is closed.
func (q *eventQueue) take(buf []queued) ([]queued, bool, bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	out := q.items
	q.items = buf
	lost, closed := q.lost, q.closed
	q.lost = false
	return out, lost, closed
}

// fullDue says whether a scheduled check re-hashes everything:
// full_check_interval has passed since the last one that did (or it is 0).
func (m *Monitor) fullDue() bool {
	iv := m.cfg.FullCheckInterval.D()
	return iv <= 0 || !m.opt.Now().Before(m.st.lastFull.Add(iv))
}

func (m *Monitor) locked(what string, f func()) {
	m.mu.Lock(what)
	defer m.mu.Unlock()
	f()
}

// watchFileRoots watches the parent directory of each root that is not a
// directory, so that replacing the file is seen.
func (ws *watchState) watchFileRoots() {
	for _, r := range ws.m.sel.Roots() {
		var st unix.Stat_t
		if err := unix.Lstat(r, &st); err == nil && typeOf(st.Mode) == TypeDir {
			continue
		}
		d := filepath.Dir(r)
		if ws.parents[d] {
			continue
		}
		if err := ws.src.Add(d); err != nil {
			ws.m.log.Warn("integrity watch", "dir", d, "err", err)
			continue
		}
		ws.parents[d] = true
	}
}

// watchDir adds a watch on directory d (called while scanning).
func (ws *watchState) watchDir(d string) {
	if ws.watched[d] {
		return
	}
	if err := ws.src.Add(d); err != nil {
		if !ws.failed[d] {
			ws.failed[d] = true
			ws.m.st.watchFails++
			if errors.Is(err, unix.ENOSPC) {
				ws.m.reportEvent(KindWatchLimit, SevMedium, d, "inotify watch limit reached (fs.inotify.max_user_watches): "+
					"directory scanned now but not watched in real time; scheduled checks cover it")
			} else {
				ws.m.log.Warn("integrity watch", "dir", d, "err", err)
			}
		}
		return
	}
	delete(ws.failed, d)
	ws.watched[d] = true
}

// unwatchTree drops the watches on d and every watched directory below it
// (a moved directory keeps its watches under the old names otherwise).
func (ws *watchState) unwatchTree(d string) {
	for w := range ws.watched {
		if w == d || strings.HasPrefix(w, d+"/") {
			_ = ws.src.Remove(w)
			delete(ws.watched, w)
		}
	}
}

func (ws *watchState) onError(ctx context.Context, err error) {
	m := ws.m
	if !errors.Is(err, fsnotify.ErrEventOverflow) {
		// Churn in a watched tree (directories renamed and removed under
		// their watches) makes such errors at will: log one a minute.
		if now := time.Now(); now.Sub(ws.errLogged) >= time.Minute {
			m.log.Warn("integrity watcher", "err", err, "not_logged_since", ws.errQuiet)
			ws.errLogged, ws.errQuiet = now, 0
		} else {
			ws.errQuiet++
		}
		return
	}
	m.st.overflows++
	m.reportEvent(KindOverflow, SevMedium, "", "inotify event queue overflowed: events were lost; rescanning everything now")
	if err := m.fullRescan(ctx, false, true); err != nil {
		m.log.Warn("integrity rescan after overflow", "err", err)
	}
}

// onEvent schedules a check of the event's path. The verb is only a hint:
// a created directory is watched and scanned at once (so entries created in
// it right away are not missed), and a moved or removed directory loses its
// watches; the verdict always comes from re-stat'ing the path.
func (ws *watchState) onEvent(ctx context.Context, ev fsnotify.Event) {
	m := ws.m
	m.st.events++
	p := filepath.Clean(ev.Name)
	if !m.sel.Selected(p) {
		return
	}
	if ev.Has(fsnotify.Remove) || ev.Has(fsnotify.Rename) {
		if ws.watched[p] {
			ws.unwatchTree(p)
		}
	}
	if ev.Has(fsnotify.Create) && !ws.watched[p] {
		var st unix.Stat_t
		if unix.Lstat(p, &st) == nil && typeOf(st.Mode) == TypeDir && m.sel.watchable(p) {
			ws.addTree(ctx, p)
		}
	}
	ws.pend(p)
}

// pend schedules a check of p once it has been quiet for the debounce time
// (or, if it never is, after maxDelay).
func (ws *watchState) pend(p string) {
	now := time.Now()
	pd, ok := ws.pending[p]
	if !ok {
		pd.first = now
	}
	pd.due = now.Add(ws.m.cfg.Debounce.D())
	if limit := pd.first.Add(ws.maxDelay); limit.Before(pd.due) {
		pd.due = limit // a path that never goes quiet is still checked
	}
	ws.pending[p] = pd
	if !ws.armed {
		ws.timer.Reset(pd.due.Sub(now))
		ws.armed = true
	}
}

// addTree watches directory p and everything below it at once, and
// schedules a check of everything it finds there: entries created before
// the watches were in place are not missed, and files still being written
// are judged once they are quiet.
func (ws *watchState) addTree(ctx context.Context, p string) {
	ents, err := ws.m.scanner.ScanTree(ctx, p, ws.watchDir)
	if err != nil {
		return
	}
	for q := range ents {
		ws.pend(q)
	}
}

// fire checks every path whose debounce has expired, then re-arms the
// timer for the earliest remaining one.
func (ws *watchState) fire(ctx context.Context) {
	now := time.Now()
	var due []string
	for p, pd := range ws.pending {
		if !pd.due.After(now) {
			delete(ws.pending, p)
			if ws.m.sel.Selected(p) { // a reload may have taken it out
				due = append(due, p)
			}
		}
	}
	slices.Sort(due)
	ws.check(ctx, due)
	var next time.Time
	for _, pd := range ws.pending {
		if next.IsZero() || pd.due.Before(next) {
			next = pd.due
		}
	}
	if !next.IsZero() {
		ws.timer.Reset(max(0, time.Until(next)))
		ws.armed = true
	}
}

// check re-stats and re-hashes paths and judges them. A path that was a
// directory and is one no more takes everything known below it along.
func (ws *watchState) check(ctx context.Context, paths []string) {
	m := ws.m
	for _, r := range m.scanner.ScanPaths(ctx, paths) {
		p, cur := r.Path, r.Entry
		if cur.Type == TypeDir && !ws.watched[p] && m.sel.watchable(p) {
			ws.addTree(ctx, p) // p itself is checked again shortly
			continue
		}
		wasDir := m.base.Entries[p].Type == TypeDir || m.observed[p].Type == TypeDir
		if cur.Type != TypeDir && ws.watched[p] {
			ws.unwatchTree(p)
		}
		m.evaluate(p, cur, false)
		if wasDir && cur.Type != TypeDir {
			ws.checkBelow(ctx, p)
		}
	}
}

// checkBelow judges everything known below dir, which is gone.
func (ws *watchState) checkBelow(ctx context.Context, dir string) {
	m := ws.m
	var below []string
	for _, q := range unionPaths(m.base.Entries, m.observed) {
		if strings.HasPrefix(q, dir+"/") {
			below = append(below, q)
		}
	}
	for _, r := range m.scanner.ScanPaths(ctx, below) {
		m.evaluate(r.Path, r.Entry, false)
	}
}
