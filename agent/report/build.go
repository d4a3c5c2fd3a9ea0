package report

import (
	"cmp"
	"encoding/json"
	"io"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/parryhq/parry/agent/api"
)

// Row caps: a report stays readable (and bounded) on a day with a flood.
const (
	MaxRows = 50
	TopN    = 10
)

// fields is the union of the audit fields the report reads.
type fields struct {
	ID       string          `json:"id"`
	Action   string          `json:"action"`
	Targets  []string        `json:"targets"`
	Until    string          `json:"until"`
	Reason   string          `json:"reason"`
	Source   string          `json:"source"`
	Rule     string          `json:"rule"`
	Sender   json.RawMessage `json:"sender"`
	Isolate  bool            `json:"isolate"`
	DryRun   bool            `json:"dry_run"`
	Error    string          `json:"error"`
	Op       string          `json:"op"`
	Count    int             `json:"count"`
	Kind     string          `json:"kind"`
	IP       string          `json:"ip"`
	Severity string          `json:"severity"`
	Path     string          `json:"path"`
	Detail   string          `json:"detail"`
	SHA256   string          `json:"sha256"`
	Trigger  string          `json:"trigger"`
	Decision string          `json:"decision"`
	Conns    json.RawMessage `json:"connections"`
	Present  *bool           `json:"table_was_present"`
	Signals  []fields        `json:"signals"` // event "signals": a batch of signal records
	Detector string          `json:"detector"`
	// integrity findings: who changed the file and what changed in it
	Actor       *api.Actor      `json:"actor"`
	Diff        []string        `json:"diff"`
	DiffOmitted int             `json:"diff_omitted"`
	ContentNote string          `json:"content_note"`
	Country     string          `json:"country"`
	ASN         json.RawMessage `json:"asn"` // a number or a string
	Attrs       struct {
		Detector string `json:"detector"`
		Country  string `json:"country"`
		ASN      string `json:"asn"`
	} `json:"attrs"`
}

// asn is the signal's AS number as text ("AS64500"), from its field or attrs.
func (f fields) asn() string {
	s := f.Attrs.ASN
	if len(f.ASN) > 0 {
		var v any
		if json.Unmarshal(f.ASN, &v) == nil {
			switch v := v.(type) {
			case string:
				s = v
			case float64:
				s = strconv.FormatFloat(v, 'f', -1, 64)
			}
		}
	}
	if s == "" {
		return ""
	}
	if !strings.HasPrefix(strings.ToUpper(s), "AS") {
		s = "AS" + s
	}
	return s
}

// sender reads the sender as a string ("uid=0(root)") or a Sender object.
func (f fields) sender() string {
	if len(f.Sender) == 0 {
		return ""
	}
	var s string
	if json.Unmarshal(f.Sender, &s) == nil {
		return s
	}
	var o struct {
		UID  *uint32 `json:"uid"`
		User string  `json:"user"`
	}
	if json.Unmarshal(f.Sender, &o) == nil {
		if o.User != "" {
			return o.User
		}
		if o.UID != nil {
			return "uid=" + strconv.FormatUint(uint64(*o.UID), 10)
		}
	}
	return ""
}

func (f fields) action(l Line) Action {
	return Action{Time: l.Time.UTC(), Action: l.Event, ID: f.ID, Targets: f.Targets, Until: f.Until, Reason: f.Reason,
		Source: f.Source, Rule: f.Rule, Sender: f.sender(), Isolate: f.Isolate, Error: f.Error, DryRun: f.DryRun}
}

// builder accumulates one report.
type builder struct {
	r         Report
	kinds     map[string]int
	senders   map[string]int
	rules     map[string]int
	detectors map[string]int
	countries map[string]int
	asns      map[string]int
	sources   map[string]*Source
	blockIdx  map[string]int // decision id -> index in r.Blocks
	series    *Series
}

// MaxKeys bounds the distinct keys one count table keeps (kinds, senders,
// rules, detectors, countries, ASNs): beyond it new keys count as "other",
// so a flood of hostile names cannot grow the report without bound.
const MaxKeys = 4096

// MaxSteps bounds the steps of the report's series (a 24h window has 96
// steps of 15 minutes).
const MaxSteps = 100

// steps are the step widths a series may have, smallest first.
var steps = []time.Duration{time.Minute, 5 * time.Minute, 15 * time.Minute, 30 * time.Minute, time.Hour,
	3 * time.Hour, 6 * time.Hour, 12 * time.Hour, 24 * time.Hour, 7 * 24 * time.Hour}

// newSeries picks the smallest step that covers [from, to) in at most
// MaxSteps steps, aligned on the step; nil for an open window.
func newSeries(from, to time.Time) *Series {
	if from.IsZero() || to.IsZero() || !to.After(from) {
		return nil
	}
	for _, st := range steps {
		start := from.UTC().Truncate(st)
		n := int((to.Sub(start) + st - 1) / st)
		if n <= MaxSteps || st == steps[len(steps)-1] {
			n = min(n, 10*MaxSteps) // a window of years at weekly steps: bounded all the same
			return &Series{Start: start, Step: int64(st / time.Second), Blocks: make([]int, n),
				Signals: make([]int, n), Refused: make([]int, n), Findings: make([]int, n)}
		}
	}
	return nil
}

// tick counts one event at t in the series slice pick chooses.
func (b *builder) tick(t time.Time, pick func(*Series) []int) {
	s := b.series
	if s == nil || t.Before(s.Start) {
		return
	}
	i := int(t.Sub(s.Start) / (time.Duration(s.Step) * time.Second))
	if v := pick(s); i < len(v) {
		v[i]++
	}
}

func blocksOf(s *Series) []int   { return s.Blocks }
func signalsOf(s *Series) []int  { return s.Signals }
func refusedOf(s *Series) []int  { return s.Refused }
func findingsOf(s *Series) []int { return s.Findings }

func newBuilder(chain Chain, host string, from, to time.Time) *builder {
	return &builder{r: Report{Host: host, From: from.UTC(), To: to.UTC(), Chain: chain},
		kinds: map[string]int{}, senders: map[string]int{}, rules: map[string]int{}, detectors: map[string]int{},
		countries: map[string]int{}, asns: map[string]int{},
		sources: map[string]*Source{}, blockIdx: map[string]int{}, series: newSeries(from, to)}
}

// count adds one to key in m, or to "other" once m has MaxKeys keys.
func count(m map[string]int, key string) {
	if _, ok := m[key]; !ok && len(m) >= MaxKeys {
		key = "other"
	}
	m[key]++
}

// Build summarises the lines (already limited to [from, to)).
func Build(in Lines, chain Chain, host string, from, to time.Time) Report {
	b := newBuilder(chain, host, from, to)
	for _, l := range in.Lines {
		b.add(l, l.fields)
	}
	return b.finish(in.Malformed)
}

// Summarize reads the audit log from r and summarises [from, to) in one
// streaming pass: memory is bounded by the report, not the log.
func Summarize(r io.Reader, chain Chain, host string, from, to time.Time) (Report, error) {
	b := newBuilder(chain, host, from, to)
	sk, err := Scan(r, from, to, func(l Line) { b.add(l, l.fields) })
	if err != nil {
		return Report{}, err
	}
	return b.finish(sk.Malformed), nil
}

func (b *builder) finish(malformed int) Report {
	r := &b.r
	r.Malformed = malformed
	r.ByKind, r.BySender = top(b.kinds, TopN), top(b.senders, TopN)
	r.Series = b.series
	// The new tables are absent when empty, as older daemons send them.
	for _, t := range []struct {
		dst *[]Count
		m   map[string]int
	}{{&r.ByRule, b.rules}, {&r.ByDetector, b.detectors}, {&r.ByCountry, b.countries}, {&r.ByASN, b.asns}} {
		if len(t.m) > 0 {
			*t.dst = top(t.m, TopN)
		}
	}
	for _, s := range b.sources {
		r.Sources = append(r.Sources, *s)
	}
	slices.SortFunc(r.Sources, func(a, c Source) int {
		return cmp.Or(cmp.Compare(c.Signals+c.Blocks, a.Signals+a.Blocks), compareAddr(a.Addr, c.Addr))
	})
	if len(r.Sources) > TopN {
		r.Sources = r.Sources[:TopN]
	}
	for _, s := range []*[]Action{&r.Blocks, &r.Unblocks, &r.Refused, &r.Lockdowns} {
		if *s == nil {
			*s = []Action{}
		}
	}
	if r.Findings == nil {
		r.Findings = []Finding{}
	}
	if r.Evidence == nil {
		r.Evidence = []Ev{}
	}
	if r.Sources == nil {
		r.Sources = []Source{}
	}
	return *r
}

func (b *builder) add(l Line, f fields) {
	r := &b.r
	switch l.Event {
	case "block":
		r.Totals.Blocks++
		b.tick(l.Time, blocksOf)
		rule := cmp.Or(f.Source, "unknown")
		if f.Rule != "" {
			rule += "/" + f.Rule
		}
		count(b.rules, rule)
		r.Totals.Targets += len(f.Targets)
		for _, t := range f.Targets {
			b.source(t).Blocks++
		}
		if f.DryRun {
			r.Totals.DryRuns++
		}
		if len(r.Blocks) < MaxRows {
			b.blockIdx[f.ID] = len(r.Blocks)
			r.Blocks = append(r.Blocks, f.action(l))
		}
	case "unblock":
		r.Totals.Unblocks++
		capped(&r.Unblocks, f.action(l))
	case "expire":
		r.Totals.Expired += max(f.Count, len(f.Targets))
	case "refuse":
		r.Totals.Refused++
		b.tick(l.Time, refusedOf)
		a := f.action(l)
		if a.Action = f.Action; a.Action == "" {
			a.Action = f.Op
		}
		capped(&r.Refused, a)
	case "lockdown", "release":
		if l.Event == "lockdown" {
			r.Totals.Lockdowns++
		} else {
			r.Totals.Releases++
		}
		capped(&r.Lockdowns, f.action(l))
	case "log", "notify":
		if f.DryRun || l.Event == "log" {
			r.Totals.DryRuns++
		}
	case "signal":
		b.signal(l, f)
	case "signals": // the agent audits signals in batches
		for _, sf := range f.Signals {
			b.signal(l, sf)
		}
	case "finding", "integrity_finding":
		b.finding(l, f)
	case "evidence":
		r.Totals.Evidence++
		if len(r.Evidence) < MaxRows {
			r.Evidence = append(r.Evidence, Ev{Time: l.Time.UTC(), ID: f.ID, SHA256: f.SHA256, Reason: f.Reason, Trigger: f.Trigger})
		}
	case "block_connections":
		if i, ok := b.blockIdx[f.Decision]; ok {
			var conns []json.RawMessage
			_ = json.Unmarshal(f.Conns, &conns)
			r.Blocks[i].Conns = len(conns)
		}
	case "reconcile":
		r.Totals.Reconciles++
		if f.Present != nil && !*f.Present {
			r.Totals.TableHealed++
		}
	}
}

func (b *builder) signal(l Line, f fields) {
	b.r.Totals.Signals++
	b.tick(l.Time, signalsOf)
	count(b.kinds, cmp.Or(f.Kind, "unknown"))
	sender := f.sender()
	if i := strings.Index(sender, " pid="); i >= 0 { // one sender, whatever process it used
		sender = sender[:i]
	}
	count(b.senders, cmp.Or(sender, f.Source, "unknown"))
	count(b.detectors, cmp.Or(f.Detector, f.Attrs.Detector, f.Source, "unknown"))
	country, asn := cmp.Or(f.Country, f.Attrs.Country), f.asn()
	if country != "" {
		count(b.countries, country)
	}
	if asn != "" {
		count(b.asns, asn)
	}
	if f.IP != "" {
		src := b.source(f.IP)
		src.Signals++
		src.Country, src.ASN = cmp.Or(country, src.Country), cmp.Or(asn, src.ASN)
	}
}

func (b *builder) finding(l Line, f fields) {
	b.r.Totals.Findings++
	b.tick(l.Time, findingsOf)
	if len(b.r.Findings) < MaxRows {
		b.r.Findings = append(b.r.Findings, Finding{Time: l.Time.UTC(), Path: f.Path, Severity: f.Severity, Detail: f.Detail,
			Actor: f.Actor.String(), Diff: api.ContentText(f.Diff, f.DiffOmitted, f.ContentNote)})
	}
}

// source keys addresses in their canonical form (a /32 block and the
// signals of that IP are one source).
func (b *builder) source(s string) *Source {
	key := s
	if p, err := netip.ParsePrefix(s); err == nil && p.IsSingleIP() {
		key = p.Addr().String()
	} else if a, err := netip.ParseAddr(s); err == nil {
		key = a.Unmap().String()
	}
	src := b.sources[key]
	if src == nil {
		src = &Source{Addr: key}
		b.sources[key] = src
	}
	return src
}

func capped(rows *[]Action, a Action) {
	if len(*rows) < MaxRows {
		*rows = append(*rows, a)
	}
}

func top(m map[string]int, n int) []Count {
	out := make([]Count, 0, len(m))
	for k, v := range m {
		out = append(out, Count{Key: k, N: v})
	}
	slices.SortFunc(out, func(a, b Count) int { return cmp.Or(cmp.Compare(b.N, a.N), strings.Compare(a.Key, b.Key)) })
	if len(out) > n {
		out = out[:n]
	}
	return out
}

func compareAddr(a, b string) int {
	pa, ea := netip.ParsePrefix(a)
	if ea != nil {
		if ad, err := netip.ParseAddr(a); err == nil {
			pa, ea = netip.PrefixFrom(ad, ad.BitLen()), nil
		}
	}
	pb, eb := netip.ParsePrefix(b)
	if eb != nil {
		if ad, err := netip.ParseAddr(b); err == nil {
			pb, eb = netip.PrefixFrom(ad, ad.BitLen()), nil
		}
	}
	if ea == nil && eb == nil {
		return cmp.Or(pa.Addr().Compare(pb.Addr()), cmp.Compare(pa.Bits(), pb.Bits()))
	}
	return strings.Compare(a, b)
}

// EvidenceHashes reads the audit log from r and returns the SHA-256 the
// chain recorded for each evidence ID.
func EvidenceHashes(r io.Reader) (map[string]string, error) {
	out := map[string]string{}
	_, err := Scan(r, time.Time{}, time.Time{}, func(l Line) {
		if l.Event == "evidence" && l.fields.ID != "" {
			out[l.fields.ID] = l.fields.SHA256
		}
	})
	return out, err
}
