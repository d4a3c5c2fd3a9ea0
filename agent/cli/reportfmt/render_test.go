package reportfmt

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/parryhq/parry/agent/api"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden")

// TestGoldenDay renders the report agent/report builds from its scripted
// day (its testdata/day.json.golden, the op's answer as sent) as text and
// Markdown.
func TestGoldenDay(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("..", "..", "report", "testdata", "day.json.golden"))
	if err != nil {
		t.Fatal(err)
	}
	var rep api.Report
	if err := json.Unmarshal(b, &rep); err != nil {
		t.Fatal(err)
	}
	for _, format := range []string{"text", "markdown", "html", "json"} {
		t.Run(format, func(t *testing.T) {
			var out bytes.Buffer
			if err := Render(&out, rep, format); err != nil {
				t.Fatal(err)
			}
			golden := filepath.Join("testdata", "day."+format+".golden")
			if format == "json" {
				golden = filepath.Join("..", "..", "report", "testdata", "day.json.golden")
			} else if *update {
				if err := os.WriteFile(golden, out.Bytes(), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run go test -update to create it)", err)
			}
			if d := cmp.Diff(string(want), out.String()); d != "" {
				t.Errorf("%s differs from %s (-want +got; go test -update rewrites it):\n%s", format, golden, d)
			}
		})
	}
}

func TestBrokenChainShown(t *testing.T) {
	r := api.Report{Chain: api.AuditChain{Checked: true, OK: false, Lines: 7, FirstBad: 8, Reason: "hash mismatch: the line was edited"}, Host: "h"}
	var out bytes.Buffer
	Render(&out, r, "markdown")
	if !strings.Contains(out.String(), "BROKEN at line 8: hash mismatch") {
		t.Errorf("broken chain not reported:\n%s", out.String())
	}
	var page bytes.Buffer
	if err := Render(&page, r, "html"); err != nil || !strings.Contains(page.String(), `class="verdict broken"`) {
		t.Errorf("html: %v; the broken chain is not shown as broken", err)
	}
	if err := Render(&out, r, "pdf"); err == nil {
		t.Error("unknown format accepted")
	}
}

// Free text chosen by others (a reason, a user name that became a signal
// key, a file name) cannot add rows to the text report.
func TestTextKeepsFreeTextOnItsRow(t *testing.T) {
	at := time.Date(2026, 11, 27, 1, 0, 0, 0, time.UTC)
	r := api.Report{From: at, To: at,
		Blocks:   []api.ReportAction{{Time: at, Action: "block", Targets: []string{"203.0.113.7"}, Reason: "x\nFAKE ROW\tcol"}},
		ByKind:   []api.ReportCount{{Key: "user a\nFAKE", N: 1}},
		Findings: []api.ReportFinding{{Time: at, Severity: "high", Path: "/app/a\nFAKE", Detail: "d\rFAKE"}},
	}
	r.Totals.Blocks = 1
	var out bytes.Buffer
	if err := Render(&out, r, "text"); err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(out.String(), "\n") {
		if strings.HasPrefix(l, "FAKE") || strings.Contains(l, "\r") {
			t.Fatalf("free text broke out of its row: %q in\n%s", l, out.String())
		}
	}
	if !strings.Contains(out.String(), `x\nFAKE ROW\tcol`) {
		t.Fatalf("reason not shown escaped:\n%s", out.String())
	}
}
