package sources

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/parryhq/parry/agent/api"
	"github.com/parryhq/parry/agent/detect"
	"github.com/parryhq/parry/agent/logsource"
	"github.com/parryhq/parry/response"
)

// Handler is the policy as the sources see it.
type Handler interface {
	// Signal runs a signal through the policy (counted, recorded) and
	// returns the decisions it made, which the manager hands to Enforce.
	Signal(sig response.Signal) []response.Decision
	// Enforce enforces decisions, as one batch (one store commit).
	Enforce(ctx context.Context, decs []response.Decision)
	// Replay counts a signal already handled before a restart, at the time
	// it was first seen, without deciding (response.Engine.Replay).
	Replay(sig response.Signal, at time.Time)
}

// Store keeps the positions (the daemon's store key/value space).
type Store interface {
	Get(key string) ([]byte, error)
	Put(key string, value []byte) error
}

// Options are the manager's dependencies.
type Options struct {
	Handler Handler
	Store   Store
	// Window is the longest counting window of the policy: how far back a
	// start reads (response.Engine.LongestWindow).
	Window func() time.Duration
	// Observe is told of each line's outcome (metrics); may be nil.
	Observe func(source, detector, result string)
	// SaveEvery is how often a changed position is written; default 1s.
	SaveEvery time.Duration
	Now       func() time.Time
	Logger    *slog.Logger
	// Poll is the file sources' poll interval (logsource.DefaultPoll).
	Poll time.Duration
}

// Manager owns the running sources, their counters and their positions.
type Manager struct {
	o       Options
	cfg     Config
	runners []*runner
	started time.Time
	queue   chan pendingDecisions // to the enforcer (group commit)
}

// pendingDecisions are the decisions of one line, on their way to the
// enforcer.
type pendingDecisions struct {
	r    *runner
	seq  uint64
	decs []response.Decision
}

// maxBatch bounds the decisions the enforcer takes in one batch.
const maxBatch = 1024

// New checks cfg and builds the sources; Run starts them.
func New(cfg Config, o Options) (*Manager, error) {
	specs, err := cfg.plan()
	if err != nil {
		return nil, fmt.Errorf("sources: %w", err)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.SaveEvery <= 0 {
		o.SaveEvery = time.Second
	}
	if o.Window == nil {
		o.Window = func() time.Duration { return 0 }
	}
	m := &Manager{o: o, cfg: cfg, started: o.Now(), queue: make(chan pendingDecisions, maxBatch)}
	for _, s := range specs {
		m.runners = append(m.runners, &runner{m: m, spec: s, key: "sources/" + s.name + "/position",
			perDetector: map[string]map[string]uint64{}})
	}
	return m, nil
}

// Run runs every source until ctx ends, saving positions as it goes and
// once more at the end. A source that cannot start (no journal, an
// unreadable file) is retried by its reader and shown in Status; it never
// stops the others or the daemon.
func (m *Manager) Run(ctx context.Context) {
	var wg sync.WaitGroup
	for _, r := range m.runners {
		wg.Add(1)
		go func() { defer wg.Done(); r.run(ctx) }()
	}
	enforced := make(chan struct{})
	go func() { defer close(enforced); m.enforcer(context.WithoutCancel(ctx)) }()
	t := time.NewTicker(m.o.SaveEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			wg.Wait()
			close(m.queue) // the enforcer finishes what is queued
			<-enforced
			for _, r := range m.runners {
				r.save()
			}
			return
		case <-t.C:
			for _, r := range m.runners {
				r.save()
				r.checkSilence()
			}
		}
	}
}

// enforcer enforces the sources' decisions until the queue is closed: the
// first waiting decision at once (a lone attack is not delayed), and
// whatever queued up meanwhile as one batch, one store commit for all
// (a burst of a thousand attackers is not a thousand fsyncs). A source's
// position is saved past a line only once the line's decisions are
// enforced.
func (m *Manager) enforcer(ctx context.Context) {
	for p := range m.queue {
		batch := []pendingDecisions{p}
		n := len(p.decs)
	drain:
		for n < maxBatch {
			select {
			case q, ok := <-m.queue:
				if !ok {
					break drain
				}
				batch = append(batch, q)
				n += len(q.decs)
			default:
				break drain
			}
		}
		decs := make([]response.Decision, 0, n)
		for _, q := range batch {
			decs = append(decs, q.decs...)
		}
		ectx, cancel := context.WithTimeout(ctx, time.Minute)
		m.o.Handler.Enforce(ectx, decs)
		cancel()
		for _, q := range batch {
			q.r.enforced(q.seq)
		}
	}
}

// Status reports every source.
func (m *Manager) Status() []api.SourceStatus {
	out := make([]api.SourceStatus, 0, len(m.runners))
	for _, r := range m.runners {
		out = append(out, r.status())
	}
	return out
}

// Summary is the sources' part of op status.
func (m *Manager) Summary() *api.SourcesSummary {
	s := &api.SourcesSummary{Count: len(m.runners)}
	for _, st := range m.Status() {
		switch {
		case !st.Available:
			s.Warnings = append(s.Warnings, fmt.Sprintf("source %s unavailable (retrying): %s", st.Name, orDash(st.Error)))
		case st.Warning != "":
			s.Warnings = append(s.Warnings, fmt.Sprintf("source %s: %s", st.Name, st.Warning))
		}
	}
	return s
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// Mark is a position of a source with when it was read. A saved record
// holds the position after the last line handled and marks: positions
// before lines read at least Window/32 apart, going back the longest
// policy window, from which a restart reads back.
type Mark struct {
	File   *logsource.Position `json:"file,omitempty"`
	Cursor string              `json:"cursor,omitempty"`
	Since  time.Time           `json:"since,omitzero"`  // journal, first start: its --since (no cursor before it)
	Logged time.Time           `json:"logged,omitzero"` // journal: the entry's own time
	Time   time.Time           `json:"time"`            // when the line after the mark (for Pos: the line before it) was read
}

func (k Mark) zero() bool { return k.File == nil && k.Cursor == "" && k.Since.IsZero() }

// record is what the store keeps per source.
type record struct {
	Kind  string `json:"kind"`
	Pos   Mark   `json:"pos"`
	Marks []Mark `json:"marks,omitempty"`
}

// pendingLine is a line whose decisions wait for the enforcer: the
// position before it, and how many marks there were then (marks after it
// are not saved either).
type pendingLine struct {
	seq    uint64
	before Mark
	marks  int
}

// maxMarks bounds a record's marks.
const maxMarks = 64

// runner is one source.
type runner struct {
	m *Manager
	spec
	key string

	saveMu sync.Mutex // serializes saves, so an older snapshot never overwrites a newer one

	mu          sync.Mutex
	file        *logsource.File
	journal     *logsource.Journal
	err         string
	pos         Mark
	marks       []Mark
	dirty       bool
	replayEnd   *Mark // while reading back: the saved position
	replayMarks []Mark
	replayFrom  *logsource.Position // file: where reading back began
	pending     []pendingLine       // lines whose decisions are not enforced yet, in order
	seq         uint64
	lines       uint64
	matched     uint64
	ignored     uint64
	missed      uint64
	refused     uint64
	cut         uint64
	replayed    uint64
	decisions   uint64
	lastLine    time.Time
	silent      bool
	noMatch     bool // the journal's matches select no entry at all
	perDetector map[string]map[string]uint64
}

func (r *runner) window() time.Duration { return r.m.o.Window() }

func (r *runner) markEvery() time.Duration { return max(r.window()/32, time.Second) }

// load reads the saved record; a missing or unreadable one is a first start.
func (r *runner) load() record {
	var rec record
	b, err := r.m.o.Store.Get(r.key)
	if err != nil {
		r.m.o.Logger.Warn("source: reading the saved position failed; starting as a first start", "source", r.name, "err", err)
		return record{}
	}
	if len(b) == 0 {
		return record{}
	}
	if err := json.Unmarshal(b, &rec); err != nil || rec.Kind != r.kind {
		r.m.o.Logger.Warn("source: saved position unreadable; starting as a first start", "source", r.name, "err", err)
		return record{}
	}
	return rec
}

// resume decides where a start begins: the saved position, or a mark
// before it when lines after that mark are within the policy window (they
// are read back and counted again, never decided again: see
// docs/sources.md). The zero Mark is a first start.
func (r *runner) resume(rec record, now time.Time) (Mark, bool) {
	w := r.window()
	if rec.Pos.zero() {
		return Mark{}, false
	}
	if w <= 0 || rec.Pos.Time.Before(now.Add(-w)) || len(rec.Marks) == 0 {
		return rec.Pos, false
	}
	i := 0
	for j, k := range rec.Marks {
		if !k.Time.After(now.Add(-w)) {
			i = j
		}
	}
	end := rec.Pos
	r.replayEnd = &end
	r.replayMarks = rec.Marks[i:]
	r.marks = append([]Mark(nil), rec.Marks[i:]...)
	r.replayFrom = rec.Marks[i].File
	return rec.Marks[i], true
}

func (r *runner) run(ctx context.Context) {
	now := r.m.o.Now()
	rec := r.load()
	r.mu.Lock()
	start, replay := r.resume(rec, now)
	r.pos = rec.Pos
	r.mu.Unlock()
	if replay {
		r.m.o.Logger.Info("source: reading back the policy window", "source", r.name, "window", r.window().String())
	}
	switch r.kind {
	case "journal":
		r.runJournal(ctx, start, now)
	case "file":
		r.runFile(ctx, start)
	}
}

func (r *runner) runJournal(ctx context.Context, start Mark, now time.Time) {
	o := logsource.JournalOptions{Units: r.units, Identifiers: r.idents, Command: r.command, Now: r.m.o.Now, Logger: r.m.o.Logger}
	switch {
	case start.Cursor != "":
		o.Cursor = start.Cursor
	case !start.Since.IsZero():
		o.Since = max(now.Sub(start.Since), time.Second)
	default: // first start: the policy window back
		o.Since = r.window()
		if o.Since > 0 {
			r.mu.Lock()
			r.marks = []Mark{{Since: now.Add(-o.Since), Time: now}}
			r.mu.Unlock()
		}
	}
	j, err := logsource.NewJournal(o)
	if err != nil {
		r.setErr(err)
		return
	}
	r.mu.Lock()
	r.journal = j
	r.mu.Unlock()
	go r.checkSelects(ctx, j)
	_ = j.Run(ctx, func(e logsource.Entry) {
		line := detect.Line{Text: e.Message, Cut: e.Cut, Journal: true, Source: r.name, Unit: e.Unit,
			Identifier: e.Identifier, Root: e.Root, Time: e.Time}
		read := r.m.o.Now()
		pos := Mark{Cursor: e.Cursor, Logged: e.Time, Time: read}
		r.mu.Lock()
		replay := false
		if end := r.replayEnd; end != nil {
			switch {
			case e.Cursor == end.Cursor:
				replay, r.replayEnd = true, nil
			case !end.Logged.IsZero() && e.Time.After(end.Logged):
				r.replayEnd = nil
			default:
				replay = true
			}
		}
		prev := r.pos
		if prev.Cursor == "" {
			prev = Mark{}
		}
		r.mu.Unlock()
		r.process(ctx, line, pos, prev, replay, e.Time)
	})
}

func (r *runner) runFile(ctx context.Context, start Mark) {
	o := logsource.FileOptions{Path: r.path, Backlog: r.backlog, Poll: r.m.o.Poll, Now: r.m.o.Now, Logger: r.m.o.Logger}
	if start.File != nil {
		o.Start = *start.File
	}
	f, err := logsource.NewFile(o)
	if err != nil {
		r.setErr(err)
		return
	}
	r.mu.Lock()
	r.file = f
	r.mu.Unlock()
	_ = f.Run(ctx, func(l logsource.Line) {
		line := detect.Line{Text: l.Text, Cut: l.Cut, Source: r.name, Path: l.Path, Time: l.Time}
		read := r.m.o.Now()
		p := l.Pos
		pos := Mark{File: &p, Time: read}
		r.mu.Lock()
		replay, at := false, read
		if end := r.replayEnd; end != nil && end.File != nil {
			inEnd := p.Device == end.File.Device && p.Inode == end.File.Inode
			// Lines of the file reading back began in (rotated since) come
			// before those of the saved position's file.
			inFrom := r.replayFrom != nil && !inEnd && p.Device == r.replayFrom.Device && p.Inode == r.replayFrom.Inode
			if inEnd && p.Offset <= end.File.Offset || inFrom {
				replay = true
				// The line was first read after the last mark it follows.
				for len(r.replayMarks) > 1 {
					nx := r.replayMarks[1].File
					if nx == nil || nx.Inode != p.Inode || nx.Offset >= p.Offset {
						break
					}
					r.replayMarks = r.replayMarks[1:]
				}
				if len(r.replayMarks) > 0 {
					at = r.replayMarks[0].Time
				}
				if inEnd && p.Offset == end.File.Offset {
					r.replayEnd = nil
				}
			} else {
				r.replayEnd = nil
			}
		}
		// The mark before this line: the previous line's position, or in
		// a new file (or the first line) the start of this line.
		var prev Mark
		if r.pos.File != nil && r.pos.File.Inode == p.Inode && r.pos.File.Device == p.Device && r.pos.File.Offset <= p.Offset {
			prev = r.pos
		} else {
			q := p
			q.Offset = l.Start
			prev = Mark{File: &q}
		}
		r.mu.Unlock()
		r.process(ctx, line, pos, prev, replay, at)
	})
}

// checkSelects warns once when the journal holds no entry the source's
// matches select: the unit is named differently or logs elsewhere, and the
// source would wait for lines that never come.
func (r *runner) checkSelects(ctx context.Context, j *logsource.Journal) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	ok, err := j.Selects(ctx)
	if err != nil || ok {
		return // unavailable is reported by the source itself
	}
	r.mu.Lock()
	r.noMatch = r.lines == 0
	warn := r.noMatch
	r.mu.Unlock()
	if warn {
		r.m.o.Logger.Warn("source: the journal holds no entry its match selects", "source", r.name, "units", r.units, "identifiers", r.idents)
	}
}

// process runs one line through the detectors and the policy (or, read
// back, the counts only), then advances the position. Decisions go to the
// enforcer; the saved position stays before the line until they are
// enforced, so a crash in between reads the line again as new.
func (r *runner) process(ctx context.Context, line detect.Line, pos, prev Mark, replay bool, at time.Time) {
	res := r.set.Match(line)
	var decs []response.Decision
	if res.Outcome == detect.Matched {
		if replay {
			r.m.o.Handler.Replay(res.Signal, at)
		} else {
			decs = r.m.o.Handler.Signal(res.Signal)
		}
	}
	r.mu.Lock()
	r.lines++
	r.noMatch = false
	r.lastLine = pos.Time
	if line.Cut {
		r.cut++
	}
	switch res.Outcome {
	case detect.Matched:
		r.matched++
	case detect.Ignored:
		r.ignored++
	case detect.Missed, detect.NotApplicable:
		r.missed++
	case detect.Refused:
		r.refused++
	}
	if replay {
		r.replayed++
	}
	if res.Detector != "" {
		pd := r.perDetector[res.Detector]
		if pd == nil {
			pd = map[string]uint64{}
			r.perDetector[res.Detector] = pd
		}
		pd[res.Outcome.String()]++
	}
	var seq uint64
	if len(decs) > 0 {
		r.decisions++
		r.seq++
		seq = r.seq
		before := prev
		if before.zero() {
			before = r.pos
		}
		if before.Time.IsZero() {
			before.Time = pos.Time
		}
		r.pending = append(r.pending, pendingLine{seq: seq, before: before, marks: len(r.marks)})
	}
	if !replay && !prev.zero() && (len(r.marks) == 0 || pos.Time.Sub(r.marks[len(r.marks)-1].Time) >= r.markEvery()) {
		prev.Time = pos.Time
		r.marks = append(r.marks, prev)
	}
	r.pos = pos
	r.dirty = true
	r.mu.Unlock()
	if obs := r.m.o.Observe; obs != nil {
		obs(r.name, res.Detector, res.Outcome.String())
	}
	if len(decs) > 0 {
		r.m.queue <- pendingDecisions{r: r, seq: seq, decs: decs}
	}
}

// enforced is the enforcer's word that the decisions of the lines up to
// seq are enforced: the position may move past them, and is saved now.
func (r *runner) enforced(seq uint64) {
	r.mu.Lock()
	i := 0
	for i < len(r.pending) && r.pending[i].seq <= seq {
		i++
	}
	r.pending = r.pending[i:]
	r.dirty = true
	r.mu.Unlock()
	r.save()
}

// save writes the position and the marks of the policy window if they
// changed.
func (r *runner) save() {
	r.saveMu.Lock()
	defer r.saveMu.Unlock()
	r.mu.Lock()
	if !r.dirty {
		r.mu.Unlock()
		return
	}
	r.dirty = false
	r.pruneMarks(r.m.o.Now())
	rec := record{Kind: r.kind, Pos: r.pos, Marks: append([]Mark(nil), r.marks...)}
	if len(r.pending) > 0 { // not past a line whose decisions are not enforced yet
		p := r.pending[0]
		rec.Pos, rec.Marks = p.before, rec.Marks[:min(p.marks, len(rec.Marks))]
		r.dirty = true
	}
	r.mu.Unlock()
	b, err := json.Marshal(rec)
	if err == nil {
		err = r.m.o.Store.Put(r.key, b)
	}
	if err != nil {
		r.m.o.Logger.Error("source: saving the position failed", "source", r.name, "err", err)
		r.mu.Lock()
		r.dirty = true
		r.mu.Unlock()
	}
}

// pruneMarks keeps the newest mark read before the window and those
// after it, at most maxMarks (every other one is dropped beyond that).
func (r *runner) pruneMarks(now time.Time) {
	cut := now.Add(-r.window())
	i := 0
	for j, k := range r.marks {
		if !k.Time.After(cut) {
			i = j
		}
	}
	r.marks = r.marks[i:]
	for j := range r.pending {
		r.pending[j].marks = max(r.pending[j].marks-i, 0)
	}
	for len(r.marks) > maxMarks && len(r.pending) == 0 {
		thin := r.marks[:1]
		for j := 1; j < len(r.marks)-1; j++ {
			if j%2 == 0 {
				thin = append(thin, r.marks[j])
			}
		}
		r.marks = append(thin, r.marks[len(r.marks)-1])
	}
}

func (r *runner) setErr(err error) {
	r.mu.Lock()
	r.err = err.Error()
	r.mu.Unlock()
	r.m.o.Logger.Error("source cannot start", "source", r.name, "err", err)
}

// checkSilence logs once when a source has read nothing for silent_after,
// and once when it reads again.
func (r *runner) checkSilence() {
	st := r.status()
	silent := st.Warning != ""
	r.mu.Lock()
	was := r.silent
	r.silent = silent
	r.mu.Unlock()
	switch {
	case silent && !was:
		r.m.o.Logger.Warn("source silent", "source", r.name, "warning", st.Warning)
	case !silent && was:
		r.m.o.Logger.Info("source reading again", "source", r.name)
	}
}

func (r *runner) status() api.SourceStatus {
	r.mu.Lock()
	st := api.SourceStatus{Name: r.name, Kind: r.kind, Path: r.path, Detectors: r.names, Lines: r.lines, Matched: r.matched,
		Ignored: r.ignored, Missed: r.missed, Refused: r.refused, Cut: r.cut, Replayed: r.replayed, Decisions: r.decisions,
		LastLine: r.lastLine, Error: r.err, PerDetector: map[string]map[string]uint64{}}
	for d, m := range r.perDetector {
		c := make(map[string]uint64, len(m))
		for k, v := range m {
			c[k] = v
		}
		st.PerDetector[d] = c
	}
	if !r.pos.zero() {
		st.Position, _ = json.Marshal(r.pos)
	}
	f, j := r.file, r.journal
	if r.noMatch {
		st.Warning = fmt.Sprintf("the journal holds no entry of units %v or identifiers %v: nothing to read", r.units, r.idents)
	}
	r.mu.Unlock()
	now := r.m.o.Now()
	switch {
	case f != nil:
		fs := f.Stats()
		st.Available = fs.Open
		st.Rotations = fs.Rotations + fs.Truncations
		st.Lost = fs.Lost
		if fs.Err != "" {
			st.Error = fs.Err
		}
	case j != nil:
		js := j.Stats()
		st.Available = js.Running
		st.Dropped = js.Dropped
		st.Restarts = js.Restarts
		if !js.LastEntry.IsZero() && !js.LastRead.IsZero() {
			st.Lag = js.LastRead.Sub(js.LastEntry).Round(time.Millisecond).String()
		}
		if js.Err != "" {
			st.Error = js.Err
		}
	}
	if sa := r.m.cfg.SilentAfter.D(); sa > 0 {
		last := st.LastLine
		if last.IsZero() {
			last = r.m.started
		}
		if !last.IsZero() && now.Sub(last) >= sa && st.Warning == "" {
			st.Warning = fmt.Sprintf("no line read for %s (silent_after %s)", api.FormatDuration(now.Sub(last).Truncate(time.Second)), api.FormatDuration(sa))
		}
	}
	return st
}

// LastLines returns each source's last line time (metrics).
func (m *Manager) LastLines() map[string]time.Time {
	out := make(map[string]time.Time, len(m.runners))
	for _, r := range m.runners {
		r.mu.Lock()
		out[r.name] = r.lastLine
		r.mu.Unlock()
	}
	return out
}
