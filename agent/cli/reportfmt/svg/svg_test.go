package svg

import (
	"encoding/xml"
	"io"
	"strings"
	"testing"
	"time"
)

var t0 = time.Date(2026, 3, 10, 0, 0, 0, 0, time.UTC)

// elements parses doc as XML (it must be well-formed) and counts its
// elements by name and class ("rect.bar").
func elements(t *testing.T, doc string) map[string]int {
	t.Helper()
	out := map[string]int{}
	d := xml.NewDecoder(strings.NewReader(doc))
	for {
		tok, err := d.Token()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatalf("not well-formed: %v\n%s", err, doc)
		}
		if se, ok := tok.(xml.StartElement); ok {
			out[se.Name.Local]++
			for _, a := range se.Attr {
				if a.Name.Local == "class" {
					out[se.Name.Local+"."+strings.Fields(a.Value)[0]]++
				}
			}
		}
	}
}

func TestTimeChartElements(t *testing.T) {
	c := TimeChart{Title: "Blocks", Start: t0, Step: time.Hour,
		Series: []Series{{Name: "blocks", Class: "block", Values: []int{0, 3, 0, 7}}, {Name: "refused", Class: "refused", Values: []int{1, 0, 0, 2}}},
		Bands:  []Band{{From: t0.Add(90 * time.Minute), To: t0.Add(150 * time.Minute), Label: "lockdown"}},
		Marks:  []Mark{{At: t0.Add(2 * time.Hour), Class: "sev-critical", Label: "/usr/bin/sudo"}}}
	got := elements(t, c.SVG())
	// 4 non-zero values of blocks/refused... 3+7 and 1+2: four bars, plus
	// two legend swatches.
	if got["rect.bar"] != 4+2 || got["rect.band"] != 1 || got["circle.mark"] != 1 || got["line.grid"] != 3 {
		t.Errorf("elements %v", got)
	}
	// The stack's top is 9 (7+2): the axis is rounded up to 10.
	if !strings.Contains(c.SVG(), `text-anchor="end">10</text>`) {
		t.Errorf("axis top is not 10:\n%s", c.SVG())
	}
}

func TestBandGeometry(t *testing.T) {
	c := TimeChart{Start: t0, Step: time.Hour, Width: 200, Series: []Series{{Values: make([]int, 4)}},
		Bands: []Band{{From: t0.Add(time.Hour), To: t0.Add(3 * time.Hour)}, {From: t0.Add(-time.Hour), To: t0.Add(10 * time.Hour)}}}
	doc := c.SVG()
	// Plot is 200-48-12 = 140 wide for 4h: hour 1 to 3 is x 83 width 70;
	// a band beyond the window is clipped to it.
	for _, want := range []string{`class="band" x="83" y="24" width="70"`, `class="band" x="48" y="24" width="140"`} {
		if !strings.Contains(doc, want) {
			t.Errorf("no %s in\n%s", want, doc)
		}
	}
}

func TestBarChart(t *testing.T) {
	c := BarChart{Title: "Top sources", Class: "source", Bars: []Bar{{"203.0.113.7", 6}, {"198.51.100.0/24", 3}}, Width: 460}
	doc := c.SVG()
	if got := elements(t, doc); got["rect.bar"] != 2 || got["text.label"] != 2 {
		t.Errorf("elements %v", got)
	}
	// Longest bar is the plot width (460-190-56 = 214), the second half of it.
	if !strings.Contains(doc, `width="214"`) || !strings.Contains(doc, `width="107"`) {
		t.Errorf("bar widths:\n%s", doc)
	}
}

// TestHostileText: labels from the audit log cannot open an element,
// close an attribute, or carry control characters into the document.
func TestHostileText(t *testing.T) {
	evil := "<script>alert(1)</script>\"' onload=\"x\x1b[31m\x00\u202e&amp;"
	docs := []string{
		TimeChart{Title: evil, Start: t0, Step: time.Hour, Series: []Series{{Name: evil, Class: evil, Values: []int{1}}},
			Bands: []Band{{From: t0, To: t0.Add(time.Hour), Label: evil}}, Marks: []Mark{{At: t0, Class: evil, Label: evil}}}.SVG(),
		BarChart{Title: evil, Class: evil, Bars: []Bar{{evil, 1}}}.SVG(),
	}
	for _, doc := range docs {
		elements(t, doc) // well-formed, so no element was injected
		for _, bad := range []string{"<script", "\x1b", "\x00", "\u202e", `" onload`, "' onload"} {
			if strings.Contains(doc, bad) {
				t.Errorf("%q survived in\n%s", bad, doc)
			}
		}
		if !strings.Contains(doc, "&lt;script&gt;") || !strings.Contains(doc, "&amp;amp;") {
			t.Errorf("text not escaped:\n%s", doc)
		}
	}
}

func TestNiceCeil(t *testing.T) {
	for in, want := range map[int]int{0: 1, 1: 1, 2: 2, 3: 5, 6: 10, 11: 20, 90: 100, 101: 200, 4999: 5000} {
		if got := niceCeil(in); got != want {
			t.Errorf("niceCeil(%d) = %d, want %d", in, got, want)
		}
	}
}

func TestDeterministic(t *testing.T) {
	c := TimeChart{Start: t0, Step: 15 * time.Minute, Series: []Series{{Name: "s", Class: "signal", Values: []int{5, 0, 3}}}}
	a, b := c.SVG(), c.SVG()
	if a != b {
		t.Error("two renders differ")
	}
}
