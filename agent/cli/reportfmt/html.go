package reportfmt

import (
	_ "embed"
	"fmt"
	"html/template"
	"io"
	"strings"
	"sync"
	"time"

	"github.com/parryhq/parry/agent/api"
	"github.com/parryhq/parry/agent/cli/reportfmt/svg"
)

// FormatHTML is one self-contained page: inline CSS and SVG, no script,
// no external resource.
const FormatHTML = "html"

//go:embed report.html.tmpl
var htmlSource string

// htmlTmpl is parsed on first use, not at every start of the CLI.
var htmlTmpl = sync.OnceValue(func() *template.Template {
	return template.Must(template.New("report").Funcs(template.FuncMap{
		"ts":      ts,
		"clean":   svg.Clean,
		"verb":    verb,
		"who":     who,
		"targets": targets,
		"chain":   chainLine,
		"detail": func(a api.ReportAction) string {
			s := a.Reason
			if a.Error != "" {
				s = a.Error
			}
			if a.Conns > 0 {
				s += fmt.Sprintf(" (%d connections at block time)", a.Conns)
			}
			return s
		},
	}).Parse(htmlSource))
})

// htmlView is what the template reads: the report, and the charts drawn
// from it (SVG the svg package escaped).
type htmlView struct {
	R           api.Report
	ChainClass  string
	Counts      [][2]any
	TimeCharts  []template.HTML
	BarCharts   []template.HTML
	GeoCharts   []template.HTML
	HasGeo      bool
	CountTables []countTable
}

type countTable struct {
	Title string
	Rows  []api.ReportCount
}

func renderHTML(w io.Writer, r api.Report) error {
	v := htmlView{R: r, ChainClass: "unknown"}
	switch c := r.Chain; {
	case c.Checked && c.OK:
		v.ChainClass = "ok"
	case c.Checked:
		v.ChainClass = "broken"
	}
	t := r.Totals
	v.Counts = [][2]any{{"Blocks", t.Blocks}, {"Blocked targets", t.Targets}, {"Unblocks", t.Unblocks}, {"Expired", t.Expired},
		{"Refused", t.Refused}, {"Lockdowns", t.Lockdowns}, {"Releases", t.Releases}, {"Signals", t.Signals},
		{"Integrity findings", t.Findings}, {"Evidence snapshots", t.Evidence}, {"Dry runs", t.DryRuns},
		{"Table re-asserted", t.Reconciles}, {"Table found missing", t.TableHealed}}
	v.TimeCharts = timeCharts(r)
	bars := func(title, class string, cs []api.ReportCount) template.HTML {
		rows := make([]svg.Bar, len(cs))
		for i, c := range cs {
			rows[i] = svg.Bar{Label: c.Key, N: c.N}
		}
		return template.HTML(svg.BarChart{Title: title, Class: class, Bars: rows}.SVG()) // #nosec: svg escapes its text
	}
	if len(r.Sources) > 0 {
		rows := make([]api.ReportCount, len(r.Sources))
		for i, s := range r.Sources {
			rows[i] = api.ReportCount{Key: s.Addr, N: s.Signals + s.Blocks}
		}
		v.BarCharts = append(v.BarCharts, bars("Top sources (signals + blocks)", "source", rows))
	}
	for _, c := range []struct {
		title, class string
		rows         []api.ReportCount
	}{{"Signals by kind", "signal", r.ByKind}, {"Signals by detector", "signal", r.ByDetector},
		{"Blocks by rule", "block", r.ByRule}, {"Signals by sender", "signal", r.BySender}} {
		if len(c.rows) > 0 {
			v.BarCharts = append(v.BarCharts, bars(c.title, c.class, c.rows))
		}
	}
	if len(r.ByCountry) > 0 {
		v.GeoCharts = append(v.GeoCharts, bars("Signals by country", "geo", r.ByCountry))
	}
	if len(r.ByASN) > 0 {
		v.GeoCharts = append(v.GeoCharts, bars("Signals by AS", "geo", r.ByASN))
	}
	for _, s := range r.Sources {
		v.HasGeo = v.HasGeo || s.Country != "" || s.ASN != ""
	}
	v.CountTables = []countTable{{"Signals by kind", r.ByKind}, {"Signals by sender", r.BySender}}
	if len(r.ByDetector) > 0 {
		v.CountTables = append(v.CountTables, countTable{"Signals by detector", r.ByDetector})
	}
	if len(r.ByRule) > 0 {
		v.CountTables = append(v.CountTables, countTable{"Blocks by rule", r.ByRule})
	}
	var b strings.Builder
	if err := htmlTmpl().Execute(&b, v); err != nil {
		return fmt.Errorf("report: html: %w", err)
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// timeCharts draws signals, blocks (and refusals) and findings over the
// window, with the lockdowns as bands; none when the report has no series
// (an older daemon).
func timeCharts(r api.Report) []template.HTML {
	s := r.Series
	if s == nil || s.Step <= 0 {
		return nil
	}
	step := time.Duration(s.Step) * time.Second
	bands := lockdownBands(r)
	var marks []svg.Mark
	for _, f := range r.Findings {
		marks = append(marks, svg.Mark{At: f.Time, Class: "sev-" + severityClass(f.Severity), Label: f.Severity + " " + f.Path})
	}
	charts := []svg.TimeChart{
		{Title: "Signals", Series: []svg.Series{{Name: "signals", Class: "signal", Values: s.Signals}}},
		{Title: "Blocks and refusals", Series: []svg.Series{{Name: "blocks", Class: "block", Values: s.Blocks}, {Name: "refused", Class: "refused", Values: s.Refused}}},
		{Title: "Integrity findings", Series: []svg.Series{{Name: "findings", Class: "finding", Values: s.Findings}}, Marks: marks, Height: 160},
	}
	out := make([]template.HTML, len(charts))
	for i, c := range charts {
		c.Start, c.Step, c.Bands = s.Start, step, bands
		out[i] = template.HTML(c.SVG()) // #nosec: svg escapes its text
	}
	return out
}

// lockdownBands pairs each lockdown with what ended it: the next release,
// its own until, or the end of the window.
func lockdownBands(r api.Report) []svg.Band {
	var bands []svg.Band
	for i, a := range r.Lockdowns {
		if a.Action != "lockdown" {
			continue
		}
		end := r.To
		if u, err := time.Parse(time.RFC3339Nano, a.Until); err == nil && u.Before(end) {
			end = u
		}
		for _, next := range r.Lockdowns[i+1:] {
			if next.Action == "release" || next.Action == "lockdown" {
				if next.Time.Before(end) {
					end = next.Time
				}
				break
			}
		}
		label := "lockdown " + ts(a.Time) + " to " + ts(end)
		if a.Reason != "" {
			label += ": " + a.Reason
		}
		bands = append(bands, svg.Band{From: a.Time, To: end, Label: label})
	}
	return bands
}

func severityClass(s string) string {
	switch s {
	case "low", "medium", "high", "critical":
		return s
	}
	return "other"
}
