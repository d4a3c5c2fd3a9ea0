package cli

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/parryhq/parry/agent/api"
	"github.com/parryhq/parry/agent/client"
	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"
)

func (a *App) eventsCmd() *cobra.Command {
	var follow, asJSON bool
	var since string
	var kinds []string
	cmd := &cobra.Command{
		Use:   "events",
		Short: "Show parryd's events: from the audit log, and live with --follow",
		Long: `Show parryd's events, in the audit log's vocabulary: blocks, unblocks,
refusals, signals (and those that crossed a threshold), integrity findings,
lockdowns, releases, source health, self-heal...

Without --follow, the events of the last --since (default 1h) from the audit
log, then exit. With --follow, those of --since (none if not given), then the
live ones as they happen, each exactly once, until interrupted.

--kind keeps only some kinds (comma-separated): ` + strings.Join(api.EventKinds, ", ") + `.

A reader too slow for the stream is told how many events it missed.
Only root and control.admin_groups may watch: events carry user names and
addresses.

Examples:
  parry events --follow
  parry events --follow --kind block,finding --json | jq .
  parry events --since 24h --kind lockdown,release`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ks, err := api.ParseKinds(splitKinds(kinds))
			if err != nil {
				var ae *api.Error
				errors.As(err, &ae)
				return usageErr("--kind: %s", ae.Message)
			}
			if since == "" && !follow {
				since = "1h"
			}
			if since != "" {
				if d, err := api.ParseDuration(since); err != nil || d <= 0 {
					return usageErr("--since %q: want a duration like 1h or 30m", since)
				}
			}
			return a.events(cmd.Context(), eventsRequest{Kinds: ks, Since: since}, follow, asJSON)
		},
	}
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "keep printing events as they happen")
	cmd.Flags().StringVar(&since, "since", "", "replay the events of this long ago first (default 1h without --follow)")
	cmd.Flags().StringSliceVar(&kinds, "kind", nil, "only these kinds (comma-separated)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "one JSON object per line")
	return cmd
}

func splitKinds(in []string) []string {
	var out []string
	for _, s := range in {
		out = append(out, strings.Split(s, ",")...)
	}
	return out
}

type eventsRequest struct {
	Op    string   `json:"op"`
	Kinds []string `json:"kinds,omitempty"`
	Since string   `json:"since,omitempty"`
}

// errStop ends the stream when the replay is done (no --follow).
var errStop = errors.New("stop")

func (a *App) events(ctx context.Context, req eventsRequest, follow, asJSON bool) error {
	req.Op = "events"
	c, err := a.dial()
	if err != nil {
		return err
	}
	defer c.Close()
	if ctx != nil {
		stop := context.AfterFunc(ctx, func() { c.Close() })
		defer stop()
	}
	out := a.Stdout // JSON: through the filter (C1 controls and DEL are not escaped by encoding/json)
	if !asJSON {
		out = a.rawOut()
	}
	bw := bufio.NewWriterSize(out, 32<<10)
	defer bw.Flush()
	p := &eventPrinter{w: bw, color: a.color(), now: time.Now}
	var answer api.EventsAnswer
	err = c.Stream(req, func(r client.Response) error {
		return json.Unmarshal(r.Raw, &answer)
	}, func(line []byte) error {
		var probe struct {
			Live   *bool   `json:"live"`
			Missed *int    `json:"missed"`
			End    *string `json:"end"`
		}
		if json.Unmarshal(line, &probe) != nil {
			return nil // not ours to print
		}
		if asJSON {
			// "ok" first, as every --json output (the stream's own lines never have one).
			bw.WriteString(`{"ok":true,`)
			bw.Write(bytes.TrimPrefix(line, []byte("{")))
		} else {
			p.line(line, probe.Live != nil, probe.Missed != nil, probe.End != nil)
		}
		if probe.Live != nil && !follow {
			return errStop
		}
		if probe.Live != nil || follow {
			return bw.Flush()
		}
		return nil
	})
	if errors.Is(err, errStop) {
		return nil
	}
	if err == nil { // the daemon ended the stream: stopping, or it dropped this reader
		err = errors.New("parryd ended the event stream (stopping, or this reader fell too far behind); run it again")
	}
	if err != nil {
		if ctx != nil && ctx.Err() != nil {
			return nil // interrupted
		}
		var pe *api.Error
		if errors.As(err, &pe) {
			return &exitError{code: ExitFailed, err: fmt.Errorf("%s (%s)", pe.Message, pe.Code), apiCode: string(pe.Code)}
		}
		return &exitError{code: ExitFailed, err: err}
	}
	return nil
}

// rawOut is stdout without the control-character filter (termSafe): for
// output that escapes every outside text itself (eventPrinter) and adds
// its own colour codes.
func (a *App) rawOut() io.Writer {
	if a.raw != nil {
		return a.raw
	}
	return a.Stdout
}

// color reports whether stdout is a terminal and NO_COLOR is not set
// (https://no-color.org) and TERM is not "dumb".
func (a *App) color() bool {
	if a.raw == nil || a.Getenv("NO_COLOR") != "" || a.Getenv("TERM") == "dumb" {
		return false
	}
	w := a.raw
	if cw, ok := w.(*countingWriter); ok {
		w = cw.w
	}
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

// eventPrinter renders the stream for people: one line per event,
// aligned: time, kind, event, then the fields that say what happened.
type eventPrinter struct {
	w     io.Writer
	color bool
	now   func() time.Time
}

const (
	sgrReset  = "\x1b[0m"
	sgrRed    = "\x1b[31m"
	sgrGreen  = "\x1b[32m"
	sgrYellow = "\x1b[33m"
	sgrBlue   = "\x1b[34m"
	sgrMag    = "\x1b[35m"
	sgrCyan   = "\x1b[36m"
	sgrDim    = "\x1b[2m"
	sgrBold   = "\x1b[1m"
)

var kindColor = map[string]string{
	api.KindBlock: sgrRed, api.KindLockdown: sgrBold + sgrRed, api.KindRefuse: sgrYellow,
	api.KindThreshold: sgrYellow, api.KindUnblock: sgrGreen, api.KindRelease: sgrGreen,
	api.KindFinding: sgrMag, api.KindSource: sgrCyan, api.KindHeal: sgrBlue, api.KindSignal: sgrDim,
}

func (p *eventPrinter) paint(sgr, s string) string {
	if !p.color || sgr == "" {
		return s
	}
	return sgr + s + sgrReset
}

// line prints one stream line.
func (p *eventPrinter) line(line []byte, live, missed, end bool) {
	switch {
	case live:
		var l api.EventsLive
		_ = json.Unmarshal(line, &l)
		if l.Replayed > 0 {
			fmt.Fprintf(p.w, "%s\n", p.paint(sgrDim, fmt.Sprintf("-- %d events from the audit log, through seq %d; live from here --", l.Replayed, l.After)))
		}
	case missed:
		var m api.EventsMissed
		_ = json.Unmarshal(line, &m)
		why := "this reader was too slow"
		switch m.Reason {
		case "write_timeout":
			why = "this reader stopped reading; parryd dropped it"
		case "line_too_long":
			why = "audit lines too long to replay"
		}
		fmt.Fprintf(p.w, "%s\n", p.paint(sgrBold+sgrYellow, fmt.Sprintf("-- missed %d events after seq %d (%s); parry audit has them --", m.Missed, m.After, safe(m.Reason+": "+why))))
	case end:
		var e api.EventsEnd
		_ = json.Unmarshal(line, &e)
		fmt.Fprintf(p.w, "%s\n", p.paint(sgrDim, "-- "+safe(e.End)+" --"))
	default:
		var ev api.Event
		if json.Unmarshal(line, &ev) != nil {
			return
		}
		t, err := time.Parse(time.RFC3339Nano, ev.Time)
		ts := safe(ev.Time)
		if err == nil {
			ts = t.Local().Format("2006-01-02 15:04:05")
		}
		kind := ev.Kind
		if ev.Event == "signals" && api.CrossedThreshold(ev.Fields) {
			kind = api.KindThreshold
		}
		fmt.Fprintf(p.w, "%s  %s  %s  %s\n", p.paint(sgrDim, ts), p.paint(kindColor[kind], pad(safe(kind), 9)),
			pad(safe(ev.Event), 20), summary(ev.Event, ev.Fields))
	}
}

func pad(s string, n int) string {
	if len(s) >= n {
		return s
	}
	return s + strings.Repeat(" ", n-len(s))
}

// safe escapes every control character of outside text (newline and tab
// too: one event, one line) as \u00XX, and DEL and the C1 controls.
func safe(s string) string {
	clean := true
	for _, r := range s {
		if r < 0x20 || r == 0x7f || r >= 0x80 && r <= 0x9f {
			clean = false
			break
		}
	}
	if clean {
		return s
	}
	var b strings.Builder
	for _, r := range s {
		if r < 0x20 || r == 0x7f || r >= 0x80 && r <= 0x9f {
			fmt.Fprintf(&b, `\u%04x`, r)
			continue
		}
		b.WriteRune(r)
	}
	return b.String()
}

// The fields shown first, in this order; then the others, sorted.
var firstFields = []string{"targets", "target", "until", "action", "kind", "path", "change", "severity", "reason", "rule",
	"source", "sender", "code", "error", "count"}

// maxSummary bounds the summary of one event (the audit log has it all).
const maxSummary = 400

// summary renders an event's fields as key=value pairs, outside text
// escaped, long lists cut.
func summary(event string, raw json.RawMessage) string {
	var f map[string]json.RawMessage
	if json.Unmarshal(raw, &f) != nil || len(f) == 0 {
		return ""
	}
	var parts []string
	if event == "signals" {
		parts = append(parts, signalsSummary(f)...)
		delete(f, "signals")
	}
	for _, k := range firstFields {
		if v, ok := f[k]; ok {
			parts = append(parts, safe(k)+"="+value(v))
			delete(f, k)
		}
	}
	rest := make([]string, 0, len(f))
	for k := range f {
		rest = append(rest, k)
	}
	slices.Sort(rest)
	for _, k := range rest {
		parts = append(parts, safe(k)+"="+value(f[k]))
	}
	s := strings.Join(parts, " ")
	if len(s) > maxSummary {
		s = s[:maxSummary] + "..."
	}
	return s
}

// signalsSummary shows a signal batch's signals that crossed a threshold,
// else its first ones.
func signalsSummary(f map[string]json.RawMessage) []string {
	var sigs []map[string]json.RawMessage
	if json.Unmarshal(f["signals"], &sigs) != nil {
		return nil
	}
	var decided []map[string]json.RawMessage
	for _, s := range sigs {
		var o string
		_ = json.Unmarshal(s["outcome"], &o)
		if o == "decided" {
			decided = append(decided, s)
		}
	}
	show := sigs
	if len(decided) > 0 {
		show = decided
	}
	var out []string
	for i, s := range show {
		if i == 3 {
			out = append(out, fmt.Sprintf("(+%d more)", len(show)-3))
			break
		}
		var one []string
		for _, k := range []string{"kind", "ip", "user", "source", "outcome"} {
			if v, ok := s[k]; ok {
				one = append(one, value(v))
			}
		}
		out = append(out, "["+strings.Join(one, " ")+"]")
	}
	return out
}

// value renders one field's value: strings bare (quoted if they hold a
// space or are empty), lists joined with commas (at most 5 shown), other
// JSON compact.
func value(v json.RawMessage) string {
	var s string
	if json.Unmarshal(v, &s) == nil {
		return quoteIf(safe(s))
	}
	var list []json.RawMessage
	if json.Unmarshal(v, &list) == nil {
		parts := make([]string, 0, min(len(list), 6))
		for i, e := range list {
			if i == 5 {
				parts = append(parts, fmt.Sprintf("+%d more", len(list)-5))
				break
			}
			parts = append(parts, value(e))
		}
		return strings.Join(parts, ",")
	}
	var b bytes.Buffer
	if json.Compact(&b, v) != nil {
		return "?"
	}
	return safe(b.String())
}

func quoteIf(s string) string {
	if s == "" || strings.ContainsAny(s, " =\"") {
		return fmt.Sprintf("%q", s)
	}
	return s
}
