package cli

import (
	"bytes"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestEventPrinterEscapesOutsideText: what others chose (a user name on a
// login form, a reason) reaches the terminal with every control character
// escaped, newlines too (one event, one line); colour codes come only
// from parry, only when colour is on.
func TestEventPrinterEscapesOutsideText(t *testing.T) {
	line := []byte(`{"seq":7,"time":"2026-12-01T10:00:00Z","event":"signals","kind":"signal","fields":{"count":1,"signals":[{"kind":"auth_failure","ip":"203.0.113.9","user":"x\u001b[2J\u001b]0;pwned\u0007\nFAKE LINE","outcome":"decided"}]}}` + "\n")
	for _, color := range []bool{false, true} {
		var b bytes.Buffer
		p := &eventPrinter{w: &b, color: color, now: time.Now}
		p.line(line, false, false, false)
		out := b.String()
		if strings.Count(out, "\n") != 1 {
			t.Errorf("color %v: %d lines, want 1: %q", color, strings.Count(out, "\n"), out)
		}
		for _, bad := range []string{"\x1b[2J", "\x1b]0", "\x07"} {
			if strings.Contains(out, bad) {
				t.Errorf("color %v: outside control sequence %q reached the terminal: %q", color, bad, out)
			}
		}
		if !strings.Contains(out, `\u001b[2J`) || !strings.Contains(out, "threshold") {
			t.Errorf("color %v: want the escape shown as \\u001b and kind threshold: %q", color, out)
		}
		if esc := strings.Count(out, "\x1b["); color != (esc > 0) {
			t.Errorf("color %v: %d SGR sequences: %q", color, esc, out)
		}
	}
}

// TestColorOnlyOnATerminal: a pipe or a file gets no colour; NO_COLOR
// turns it off.
func TestColorOnlyOnATerminal(t *testing.T) {
	env := map[string]string{}
	a := &App{Getenv: func(k string) string { return env[k] }, raw: &countingWriter{w: &bytes.Buffer{}}}
	if a.color() {
		t.Error("colour on a buffer")
	}
	pts := openPTY(t)
	a.raw = &countingWriter{w: pts}
	if !a.color() {
		t.Error("no colour on a terminal")
	}
	env["NO_COLOR"] = "1"
	if a.color() {
		t.Error("colour with NO_COLOR")
	}
}

// openPTY opens a pseudo-terminal's follower side.
func openPTY(t *testing.T) *os.File {
	t.Helper()
	ptmx, err := os.OpenFile("/dev/ptmx", os.O_RDWR, 0)
	if err != nil {
		t.Skipf("no pseudo-terminals here: %v", err)
	}
	t.Cleanup(func() { ptmx.Close() })
	if err := unix.IoctlSetPointerInt(int(ptmx.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		t.Fatal(err)
	}
	n, err := unix.IoctlGetInt(int(ptmx.Fd()), unix.TIOCGPTN)
	if err != nil {
		t.Fatal(err)
	}
	pts, err := os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pts.Close() })
	return pts
}
