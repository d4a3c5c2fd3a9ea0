package response

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"
)

var t0 = time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)

// clock is a fake clock the tests move by hand.
type clock struct{ t time.Time }

func (c *clock) now() time.Time          { return c.t }
func (c *clock) advance(d time.Duration) { c.t = c.t.Add(d) }

func newEngine(t testing.TB, cfg Config, c *clock) *Engine {
	t.Helper()
	e, err := New(cfg, Options{Now: c.now, Protect: []netip.Prefix{netip.MustParsePrefix("198.51.100.0/24")}})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return e
}

func ip(s string) netip.Addr { return netip.MustParseAddr(s) }

var webapp = Sender{UID: 33, GID: 33, User: "www-data", Groups: []string{"www-data"}}

func authFailure(addr string) Signal {
	return Signal{Kind: "auth_failure", IP: ip(addr), User: "alice", Source: "webapp", Sender: webapp}
}

func mustHandle(t testing.TB, e *Engine, s Signal) Result {
	t.Helper()
	r, err := e.Handle(s)
	if err != nil {
		t.Fatalf("Handle(%+v): %v", s, err)
	}
	return r
}

// render turns decisions into sorted golden lines. Times are relative to t0
// so the lines read as durations.
func render(ds []Decision) []string {
	var out []string
	for _, d := range ds {
		var b strings.Builder
		fmt.Fprintf(&b, "%s", d.Action)
		for _, p := range d.Targets {
			fmt.Fprintf(&b, " %s", p)
		}
		if !d.Until.IsZero() {
			fmt.Fprintf(&b, " until=t0+%s", d.Until.Sub(t0))
		}
		if len(d.Allow) > 0 {
			fmt.Fprintf(&b, " allow=%v", d.Allow)
		}
		if d.Isolate {
			b.WriteString(" isolate")
		}
		if d.DryRun {
			b.WriteString(" dry_run")
		}
		fmt.Fprintf(&b, " rule=%s sender=%s cause=%d", d.Rule, d.Sender, len(d.Cause))
		out = append(out, b.String())
	}
	slices.Sort(out)
	return out
}
