// Package htmlreport loads parry's HTML report in a real browser: headless
// Chromium (Debian's chromium package) renders the scripted day's page to a
// PNG and dumps its DOM, and the test checks the page loaded without errors
// and its charts have the elements the data asks for.
package htmlreport

import (
	"bytes"
	"context"
	"encoding/json"
	"image"
	"image/png"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/parryhq/parry/agent/api"
	"github.com/parryhq/parry/agent/cli/reportfmt"
)

// chromium finds the browser: skipped with a reason outside CI, a failure
// in CI (env CI set), where test/ci/deps.sh installs it.
func chromium(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if os.Getenv("CI") != "" {
		t.Fatal("chromium not found; CI must install it (test/ci/deps.sh, .ci/run)")
	}
	t.Skip("chromium not found (apt-get install chromium, or test/ci/deps.sh); skipping the browser test")
	return ""
}

// browse runs headless Chromium on page with extra flags, bounded, with
// its own throwaway profile; it returns stdout and stderr.
func browse(t *testing.T, bin, page string, extra ...string) (string, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	args := append([]string{"--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
		"--disable-component-update", "--disable-sync", "--no-first-run", "--disable-extensions",
		"--user-data-dir=" + t.TempDir(), "--enable-logging=stderr", "--v=0"}, extra...)
	cmd := exec.CommandContext(ctx, bin, append(args, "file://"+page)...)
	cmd.Env = append(os.Environ(), "HOME="+t.TempDir())
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	if err := cmd.Run(); err != nil {
		t.Fatalf("chromium %v: %v\n%s", extra, err, e.String())
	}
	return o.String(), e.String()
}

// pageErrors are lines of Chromium's log that mean the page did not load
// cleanly: a console message from the page, a failed resource, a blocked
// navigation (dbus and GPU chatter of a headless machine is not).
var pageErrors = regexp.MustCompile(`(?i)(CONSOLE[:(]|Uncaught|Failed to load resource|net::ERR_|Refused to|Not allowed to load)`)

func scripted(t *testing.T) api.Report {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "..", "agent", "report", "testdata", "day.json.golden"))
	if err != nil {
		t.Fatal(err)
	}
	var r api.Report
	if err := json.Unmarshal(b, &r); err != nil {
		t.Fatal(err)
	}
	return r
}

// TestHTMLReportInChromium: the scripted day (agent/report's golden day)
// with a hostile reason added, rendered by parry's renderer, loaded by
// Chromium from a file: no page errors, the DOM has the three time charts
// and five bar charts with the bars, bands and marks the data asks for, no
// script element, and the screenshot is a non-blank image of the window.
func TestHTMLReportInChromium(t *testing.T) {
	bin := chromium(t)
	rep := scripted(t)
	rep.Blocks[0].Reason = `<script>document.title="pwned"</script><img src=x onerror=alert(1)>`
	dir := t.TempDir()
	page := filepath.Join(dir, "day.html")
	var html bytes.Buffer
	if err := reportfmt.Render(&html, rep, reportfmt.FormatHTML); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(page, html.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}

	dom, log := browse(t, bin, page, "--dump-dom")
	for _, l := range strings.Split(log, "\n") {
		if pageErrors.MatchString(l) {
			t.Errorf("page error: %s", l)
		}
	}
	count := func(pattern string) int { return len(regexp.MustCompile(pattern).FindAllString(dom, -1)) }
	// The browser's DOM, not our bytes: what it parsed is what it shows.
	for _, c := range []struct {
		what    string
		pattern string
		want    int
	}{
		{"time charts", `<svg [^>]*class="chart time"`, 3},
		{"bar charts (sources, kinds, detectors, rules, senders, countries, ASes)", `<svg [^>]*class="chart bars"`, 7},
		{"signal bars over time (3 steps)", `<rect class="bar signal"[^>]*><title>\d\d:\d\d signals: \d+</title>`, 3},
		{"block bars over time (2 steps)", `<rect class="bar block"[^>]*><title>\d\d:\d\d blocks: \d+</title>`, 2},
		{"lockdown bands, one per time chart", `<rect class="band"`, 3},
		{"finding marks", `<circle class="mark sev-critical"`, 1},
		{"top source bars", `<rect class="bar source"`, 5},
		{"script elements", `<script`, 0},
		{"img elements", `<img`, 0},
	} {
		if got := count(c.pattern); got != c.want {
			t.Errorf("%s: %d in the DOM, want %d", c.what, got, c.want)
		}
	}
	if !strings.Contains(dom, `class="verdict ok"`) || !strings.Contains(dom, "&lt;script&gt;document.title") {
		t.Errorf("chain verdict or the escaped reason missing from the DOM")
	}
	if strings.Contains(dom, "<title>pwned") {
		t.Error("the hostile reason ran")
	}

	shot := filepath.Join(dir, "day.png")
	_, log = browse(t, bin, page, "--screenshot="+shot, "--window-size=1100,2400", "--hide-scrollbars")
	for _, l := range strings.Split(log, "\n") {
		if pageErrors.MatchString(l) {
			t.Errorf("page error: %s", l)
		}
	}
	f, err := os.Open(shot)
	if err != nil {
		t.Fatalf("no screenshot: %v", err)
	}
	defer f.Close()
	img, err := png.Decode(f)
	if err != nil {
		t.Fatalf("screenshot: %v", err)
	}
	if b := img.Bounds(); b.Dx() != 1100 || b.Dy() != 2400 {
		t.Errorf("screenshot %v, want 1100x2400", b)
	}
	if n := colours(img); n < 8 {
		t.Errorf("screenshot has %d colours: blank page?", n)
	}
	if out := os.Getenv("PARRY_REPORT_PNG"); out != "" { // to look at it: PARRY_REPORT_PNG=/tmp/day.png
		b, _ := os.ReadFile(shot)
		_ = os.WriteFile(out, b, 0o644)
	}
}

// colours counts distinct colours on a coarse grid of the image.
func colours(img image.Image) int {
	seen := map[[3]uint32]bool{}
	b := img.Bounds()
	for y := b.Min.Y; y < b.Max.Y; y += 7 {
		for x := b.Min.X; x < b.Max.X; x += 7 {
			r, g, bl, _ := img.At(x, y).RGBA()
			seen[[3]uint32{r >> 12, g >> 12, bl >> 12}] = true
		}
	}
	return len(seen)
}

// TestPageErrorsAreSeen: the error check above can fail: a page that logs
// to the console is caught.
func TestPageErrorsAreSeen(t *testing.T) {
	bin := chromium(t)
	page := filepath.Join(t.TempDir(), "bad.html")
	if err := os.WriteFile(page, []byte(`<html><body><script>console.error("boom")</script></body></html>`), 0o644); err != nil {
		t.Fatal(err)
	}
	_, log := browse(t, bin, page, "--dump-dom")
	if !pageErrors.MatchString(log) {
		t.Errorf("a console error went unseen in chromium's log:\n%s", log)
	}
}
