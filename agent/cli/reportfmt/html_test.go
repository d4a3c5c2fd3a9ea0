package reportfmt

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/parryhq/parry/agent/api"
	"github.com/parryhq/parry/agent/report"
)

func scriptedReport(t testing.TB) api.Report {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "..", "report", "testdata", "day.json.golden"))
	if err != nil {
		t.Fatal(err)
	}
	var rep api.Report
	if err := json.Unmarshal(b, &rep); err != nil {
		t.Fatal(err)
	}
	return rep
}

// TestGoldenCharts: the charts of the scripted day, each its own golden
// SVG (open testdata/day.*.svg in a browser to look at them).
func TestGoldenCharts(t *testing.T) {
	rep := scriptedReport(t)
	charts := timeCharts(rep)
	if len(charts) != 3 {
		t.Fatalf("%d time charts, want 3", len(charts))
	}
	for i, name := range []string{"signals", "blocks", "findings"} {
		golden := filepath.Join("testdata", "day."+name+".svg")
		got := string(charts[i])
		if *update {
			if err := os.WriteFile(golden, []byte(got), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		want, err := os.ReadFile(golden)
		if err != nil {
			t.Fatalf("%v (run go test -update to create it)", err)
		}
		if d := cmp.Diff(string(want), got); d != "" {
			t.Errorf("%s differs (-want +got; go test -update rewrites it):\n%s", golden, d)
		}
	}
	// The scripted day: bars at 02:00-02:15 (5 signals), 09:00 (3), 11:00
	// (1); one lockdown band on each chart; one finding dot.
	count := func(s, sub string) int { return strings.Count(s, sub) }
	if n := count(string(charts[0]), `class="bar signal"`); n != 3+1 { // three steps and the legend
		t.Errorf("signals chart has %d signal bars, want 4", n)
	}
	for i, c := range charts {
		if n := count(string(c), `class="band"`); n != 1 {
			t.Errorf("chart %d has %d lockdown bands, want 1", i, n)
		}
	}
	if n := count(string(charts[2]), `class="mark sev-critical"`); n != 1 {
		t.Errorf("findings chart has %d critical marks, want 1", n)
	}
}

// TestHTMLOlderDaemon: a report without the new fields (an older
// daemon's) renders the tables and leaves out the charts it has no data for.
func TestHTMLOlderDaemon(t *testing.T) {
	rep := scriptedReport(t)
	rep.Series, rep.ByRule, rep.ByDetector, rep.ByCountry, rep.ByASN = nil, nil, nil, nil, nil
	for i := range rep.Sources {
		rep.Sources[i].Country, rep.Sources[i].ASN = "", ""
	}
	var out bytes.Buffer
	if err := Render(&out, rep, FormatHTML); err != nil {
		t.Fatal(err)
	}
	page := out.String()
	for _, absent := range []string{`id="timeline"`, `id="geo"`, "<th>country</th>"} {
		if strings.Contains(page, absent) {
			t.Errorf("%s rendered without data", absent)
		}
	}
	for _, present := range []string{`id="blocks"`, "203.0.113.7", `id="tops"`, "verdict ok"} {
		if !strings.Contains(page, present) {
			t.Errorf("%s missing", present)
		}
	}
}

// TestHTMLSelfContained: nothing is fetched and nothing runs.
func TestHTMLSelfContained(t *testing.T) {
	var out bytes.Buffer
	if err := Render(&out, scriptedReport(t), FormatHTML); err != nil {
		t.Fatal(err)
	}
	page := strings.ToLower(out.String())
	for _, bad := range []string{"<script", "<link", "<img", "<iframe", "src=", "href=", "url(", "@import", "javascript:"} {
		if strings.Contains(page, bad) {
			t.Errorf("page contains %q", bad)
		}
	}
}

// hostile is text an attacker can put in the audit log: a user name, a
// reason, a path, a signal kind.
const hostile = "<script>alert(1)</script><img src=x onerror=alert(2)>\"'&\x1b[2J\x00\x07\u202e</td></table>"

func TestHTMLEscapesHostileText(t *testing.T) {
	at := time.Date(2026, 3, 10, 1, 0, 0, 0, time.UTC)
	act := api.ReportAction{Time: at, Action: "block", ID: hostile, Targets: []string{hostile}, Until: hostile, Reason: hostile,
		Source: hostile, Rule: hostile, Sender: hostile, Error: hostile}
	rep := api.Report{Host: hostile, From: at, To: at.Add(time.Hour),
		Chain:  api.AuditChain{Checked: true, FirstBad: 3, Reason: hostile},
		Blocks: []api.ReportAction{act}, Unblocks: []api.ReportAction{act}, Refused: []api.ReportAction{act},
		Lockdowns: []api.ReportAction{{Time: at, Action: "lockdown", Until: hostile, Reason: hostile}},
		ByKind:    []api.ReportCount{{Key: hostile, N: 2}}, BySender: []api.ReportCount{{Key: hostile, N: 2}},
		ByRule: []api.ReportCount{{Key: hostile, N: 1}}, ByDetector: []api.ReportCount{{Key: hostile, N: 1}},
		ByCountry: []api.ReportCount{{Key: hostile, N: 1}}, ByASN: []api.ReportCount{{Key: hostile, N: 1}},
		Sources:  []api.ReportSource{{Addr: hostile, Signals: 1, Country: hostile, ASN: hostile}},
		Findings: []api.ReportFinding{{Time: at, Path: hostile, Severity: hostile, Detail: hostile}},
		Evidence: []api.ReportEvidence{{Time: at, ID: hostile, SHA256: hostile, Reason: hostile, Trigger: hostile}},
		Series:   &api.ReportSeries{Start: at, Step: 900, Blocks: []int{1, 0, 0, 0}, Signals: []int{2, 0, 0, 0}, Refused: []int{1, 0, 0, 0}, Findings: []int{1, 0, 0, 0}},
	}
	var out bytes.Buffer
	if err := Render(&out, rep, FormatHTML); err != nil {
		t.Fatal(err)
	}
	page := out.String()
	for _, bad := range []string{"<script", "<img", "</td></table>", "\x1b", "\x00", "\x07", "\u202e", "onerror=alert(2)>"} {
		if strings.Contains(page, bad) {
			t.Errorf("%q reached the page unescaped", bad)
		}
	}
	// The text is there, escaped, in every place it was put.
	if n := strings.Count(page, "&lt;script&gt;alert(1)&lt;/script&gt;"); n < 30 {
		t.Errorf("escaped text appears %d times, want it in every field (>= 30)", n)
	}
	// Every tag on the page is one the template or the svg package writes.
	allowed := map[string]bool{}
	for _, t := range strings.Fields("html head meta title style body header h1 h2 p span section table thead tbody tr th td div code footer svg text rect line circle") {
		allowed[t] = true
	}
	for _, m := range regexp.MustCompile(`<([a-zA-Z][a-zA-Z0-9]*)`).FindAllStringSubmatch(page, -1) {
		if !allowed[strings.ToLower(m[1])] {
			t.Errorf("unexpected element <%s>", m[1])
		}
	}
}

// BenchmarkHTML100k: parry report --format html for a day of 100,000
// audit lines (signals and blocks from 5,000 addresses, a few findings
// and lockdowns): the daemon's summary and the CLI's page.
func BenchmarkHTML100k(b *testing.B) {
	var log bytes.Buffer
	t0 := time.Date(2026, 3, 10, 0, 0, 0, 0, time.UTC)
	for i := range 100_000 {
		ip := fmt.Sprintf("10.0.%d.%d", i%5000/256, i%256)
		at := t0.Add(time.Duration(i) * 860 * time.Millisecond).Format(time.RFC3339Nano)
		switch {
		case i%5000 == 4999:
			fmt.Fprintf(&log, `{"seq":%d,"time":%q,"event":"lockdown","fields":{"id":"l%d","action":"lockdown","until":%q,"reason":"critical finding","source":"integrity"},"prev":"x","hash":"y"}`+"\n",
				i+1, at, i, t0.Add(time.Duration(i)*860*time.Millisecond+time.Hour).Format(time.RFC3339))
		case i%1000 == 999:
			fmt.Fprintf(&log, `{"seq":%d,"time":%q,"event":"integrity_finding","fields":{"path":"/etc/f%d","severity":"high","detail":"changed"},"prev":"x","hash":"y"}`+"\n", i+1, at, i)
		case i%10 == 9:
			fmt.Fprintf(&log, `{"seq":%d,"time":%q,"event":"block","fields":{"id":"d%d","action":"block","targets":[%q],"until":"permanent","source":"policy","rule":"auth"},"prev":"x","hash":"y"}`+"\n", i+1, at, i, ip)
		default:
			fmt.Fprintf(&log, `{"seq":%d,"time":%q,"event":"signal","fields":{"kind":"auth_failure","ip":%q,"source":"sshd","sender":"uid=0(root) pid=9","outcome":"counted","attrs":{"country":"NL","asn":"64500"}},"prev":"x","hash":"y"}`+"\n", i+1, at, ip)
		}
	}
	data := log.Bytes()
	b.SetBytes(int64(len(data)))
	b.ResetTimer()
	var size int
	for range b.N {
		r, err := report.Summarize(bytes.NewReader(data), report.Chain{Checked: true, OK: true, Lines: 100_000}, "h", t0, t0.Add(24*time.Hour))
		if err != nil || r.Totals.Signals < 80_000 {
			b.Fatal(err, r.Totals)
		}
		var out bytes.Buffer
		if err := Render(&out, r, FormatHTML); err != nil {
			b.Fatal(err)
		}
		size = out.Len()
	}
	b.ReportMetric(float64(b.Elapsed().Seconds())/float64(b.N), "s/report")
	b.ReportMetric(float64(size), "page-bytes")
}
