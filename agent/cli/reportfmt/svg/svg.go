// Package svg draws the HTML report's charts as inline SVG from data: a
// time chart (stacked bars per step, shaded bands, point marks) and a
// horizontal bar chart. The functions are pure and deterministic (same
// data, same bytes), so the charts are golden-tested. Every text they
// write is escaped: labels come from the audit log, which others write.
package svg

import (
	"fmt"
	"html"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// Series is one stacked layer of a time chart: Values[i] is step i.
type Series struct {
	Name   string
	Class  string // CSS class of its bars (colour comes from the page's CSS)
	Values []int
}

// Band shades [From, To) behind the bars (a lockdown).
type Band struct {
	From, To time.Time
	Label    string
}

// Mark is a point event drawn as a dot on the time axis (a finding).
type Mark struct {
	At    time.Time
	Class string
	Label string
}

// TimeChart is a bar chart over time.
type TimeChart struct {
	Title  string
	Start  time.Time
	Step   time.Duration
	Series []Series // stacked, first at the bottom
	Bands  []Band
	Marks  []Mark
	Width  int // default 960
	Height int // default 220
}

// Layout of a time chart, in SVG user units.
const (
	padLeft   = 48
	padRight  = 12
	padTop    = 24
	padBottom = 34
	maxLabel  = 48 // runes of a label before it is cut (the full text is in <title>)
)

// SVG renders the chart.
func (c TimeChart) SVG() string {
	w, h := or(c.Width, 960), or(c.Height, 220)
	steps := 0
	for _, s := range c.Series {
		steps = max(steps, len(s.Values))
	}
	if steps == 0 || c.Step <= 0 {
		steps = 1
	}
	peak := 0
	for i := range steps {
		sum := 0
		for _, s := range c.Series {
			if i < len(s.Values) {
				sum += max(s.Values[i], 0)
			}
		}
		peak = max(peak, sum)
	}
	top := niceCeil(peak)
	plotW, plotH := float64(w-padLeft-padRight), float64(h-padTop-padBottom)
	span := c.Step * time.Duration(steps)
	xOf := func(t time.Time) float64 {
		if span <= 0 {
			return padLeft
		}
		f := float64(t.Sub(c.Start)) / float64(span)
		return padLeft + plotW*min(max(f, 0), 1)
	}
	yOf := func(v int) float64 { return padTop + plotH - plotH*float64(v)/float64(top) }

	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" class="chart time" viewBox="0 0 %d %d" width="%d" height="%d" role="img" aria-label="%s">`, w, h, w, h, esc(c.Title))
	fmt.Fprintf(&b, "<title>%s</title>", esc(c.Title))
	fmt.Fprintf(&b, `<text class="title" x="%d" y="16">%s</text>`, padLeft, esc(cut(c.Title)))
	for _, band := range c.Bands {
		x0, x1 := xOf(band.From), xOf(band.To)
		if x1 <= x0 {
			x1 = x0 + 1 // an instant, or a band that ends before the window: still visible
		}
		fmt.Fprintf(&b, `<rect class="band" x="%s" y="%d" width="%s" height="%s"><title>%s</title></rect>`,
			num(x0), padTop, num(x1-x0), num(plotH), esc(band.Label))
	}
	// Horizontal grid: 0, half, top.
	for _, v := range []int{0, top / 2, top} {
		y := yOf(v)
		fmt.Fprintf(&b, `<line class="grid" x1="%d" y1="%s" x2="%d" y2="%s"/>`, padLeft, num(y), w-padRight, num(y))
		fmt.Fprintf(&b, `<text class="axis" x="%d" y="%s" text-anchor="end">%d</text>`, padLeft-4, num(y+4), v)
	}
	barW := plotW / float64(steps)
	gap := min(barW*0.15, 2)
	for i := range steps {
		base := 0
		for _, s := range c.Series {
			if i >= len(s.Values) || s.Values[i] <= 0 {
				continue
			}
			v := s.Values[i]
			y0, y1 := yOf(base), yOf(base+v)
			at := c.Start.Add(c.Step * time.Duration(i)).UTC()
			fmt.Fprintf(&b, `<rect class="bar %s" x="%s" y="%s" width="%s" height="%s"><title>%s %s: %d</title></rect>`,
				esc(s.Class), num(padLeft+barW*float64(i)+gap/2), num(y1), num(barW-gap), num(y0-y1), at.Format("15:04"), esc(s.Name), v)
			base += v
		}
	}
	for _, m := range c.Marks {
		fmt.Fprintf(&b, `<circle class="mark %s" cx="%s" cy="%s" r="4"><title>%s %s</title></circle>`,
			esc(m.Class), num(xOf(m.At)), num(padTop+plotH), m.At.UTC().Format("15:04:05"), esc(m.Label))
	}
	// Time axis: about eight ticks on round steps.
	if c.Step > 0 {
		every := max(1, steps/8)
		for i := 0; i <= steps; i += every {
			at := c.Start.Add(c.Step * time.Duration(i)).UTC()
			x := xOf(at)
			label := at.Format("15:04")
			if span > 48*time.Hour {
				label = at.Format("01-02")
			}
			fmt.Fprintf(&b, `<line class="tick" x1="%s" y1="%s" x2="%s" y2="%s"/>`, num(x), num(padTop+plotH), num(x), num(padTop+plotH+4))
			anchor := "middle"
			if i+every > steps && i > 0 {
				anchor = "end" // the last label stays inside the chart
			}
			fmt.Fprintf(&b, `<text class="axis" x="%s" y="%s" text-anchor="%s">%s</text>`, num(x), num(padTop+plotH+16), anchor, label)
		}
	}
	// Legend.
	x := float64(w - padRight)
	for i := len(c.Series) - 1; i >= 0; i-- {
		s := c.Series[i]
		name := cut(s.Name)
		x -= float64(14 + 7*utf8.RuneCountInString(name))
		fmt.Fprintf(&b, `<rect class="bar %s" x="%s" y="6" width="10" height="10"/><text class="legend" x="%s" y="15">%s</text>`,
			esc(s.Class), num(x), num(x+13), esc(name))
	}
	b.WriteString("</svg>")
	return b.String()
}

// Bar is one row of a bar chart.
type Bar struct {
	Label string
	N     int
}

// BarChart is a horizontal bar chart (top sources, kinds, rules).
type BarChart struct {
	Title string
	Bars  []Bar
	Class string
	Width int // default 460
}

// SVG renders the chart.
func (c BarChart) SVG() string {
	const row, labelW, top = 20, 190, 26
	w := or(c.Width, 460)
	h := top + row*len(c.Bars) + 6
	peak := 1
	for _, br := range c.Bars {
		peak = max(peak, br.N)
	}
	plotW := float64(w - labelW - 56)
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" class="chart bars" viewBox="0 0 %d %d" width="%d" height="%d" role="img" aria-label="%s">`, w, h, w, h, esc(c.Title))
	fmt.Fprintf(&b, "<title>%s</title>", esc(c.Title))
	fmt.Fprintf(&b, `<text class="title" x="0" y="16">%s</text>`, esc(cut(c.Title)))
	for i, br := range c.Bars {
		y := top + row*i
		bw := plotW * float64(max(br.N, 0)) / float64(peak)
		fmt.Fprintf(&b, `<text class="label" x="%d" y="%d" text-anchor="end">%s<title>%s</title></text>`, labelW-6, y+14, esc(cut(br.Label)), esc(br.Label))
		fmt.Fprintf(&b, `<rect class="bar %s" x="%d" y="%d" width="%s" height="%d"><title>%s: %d</title></rect>`,
			esc(c.Class), labelW, y+3, num(max(bw, 1)), row-6, esc(br.Label), br.N)
		fmt.Fprintf(&b, `<text class="value" x="%s" y="%d">%d</text>`, num(float64(labelW)+max(bw, 1)+4), y+14, br.N)
	}
	b.WriteString("</svg>")
	return b.String()
}

// niceCeil rounds up to 1, 2 or 5 times a power of ten (at least 1).
func niceCeil(v int) int {
	if v <= 1 {
		return 1
	}
	for p := 1; ; p *= 10 {
		for _, m := range []int{1, 2, 5} {
			if m*p >= v {
				return m * p
			}
		}
	}
}

func or(v, d int) int {
	if v > 0 {
		return v
	}
	return d
}

// num formats a coordinate with one decimal, without a trailing ".0".
func num(f float64) string {
	s := fmt.Sprintf("%.1f", f)
	return strings.TrimSuffix(s, ".0")
}

// esc makes text safe inside SVG/HTML text and attribute values: markup
// characters escaped, control characters (which XML forbids and a
// terminal-minded attacker likes) and invalid UTF-8 shown as U+FFFD.
func esc(s string) string {
	return html.EscapeString(Clean(s))
}

// Clean replaces control characters, Unicode format characters (bidi
// overrides) and invalid UTF-8 with U+FFFD.
func Clean(s string) string {
	clean := true
	for _, r := range s {
		if r == utf8.RuneError || unicode.IsControl(r) || unicode.Is(unicode.Cf, r) {
			clean = false
			break
		}
	}
	if clean {
		return s
	}
	return strings.Map(func(r rune) rune {
		if r == utf8.RuneError || unicode.IsControl(r) || unicode.Is(unicode.Cf, r) {
			return '\uFFFD'
		}
		return r
	}, s)
}

// cut shortens a label to maxLabel runes.
func cut(s string) string {
	if utf8.RuneCountInString(s) <= maxLabel {
		return s
	}
	r := []rune(s)
	return string(r[:maxLabel-1]) + "…"
}
