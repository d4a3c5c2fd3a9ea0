// Package reportfmt renders the incident report (op report's answer,
// api.Report) as text for the terminal or Markdown for a ticket; JSON is
// the answer itself, indented; HTML is one self-contained page with charts
// (html.go, drawn by package svg). It is the CLI's: the daemon only builds the
// report (agent/report).
package reportfmt

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/parryhq/parry/agent/api"
)

// Formats Render accepts.
const (
	FormatText     = "text"
	FormatMarkdown = "markdown"
	FormatJSON     = "json"
)

// Render writes the report in format (text, markdown, html or json).
func Render(w io.Writer, r api.Report, format string) error {
	switch format {
	case FormatText, "":
		return renderText(w, r)
	case FormatMarkdown, "md":
		return renderMarkdown(w, r)
	case FormatHTML:
		return renderHTML(w, r)
	case FormatJSON:
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(r)
	}
	return fmt.Errorf("report: unknown format %q (want text, markdown, html or json)", format)
}

const stamp = "2006-01-02 15:04:05Z"

func ts(t time.Time) string { return t.UTC().Format(stamp) }

func chainLine(c api.AuditChain) string {
	switch {
	case !c.Checked:
		return "not verified"
	case c.OK:
		return fmt.Sprintf("OK (%d lines verified)", c.Lines)
	default:
		return fmt.Sprintf("BROKEN at line %d: %s", c.FirstBad, c.Reason)
	}
}

func targets(ts []string) string {
	if len(ts) > 4 {
		return strings.Join(ts[:4], ", ") + fmt.Sprintf(" (+%d more)", len(ts)-4)
	}
	return strings.Join(ts, ", ")
}

func verb(a api.ReportAction) string {
	if a.Isolate {
		return a.Action + " (isolate)"
	}
	return a.Action
}

func who(a api.ReportAction) string {
	s := a.Source
	if a.Rule != "" {
		s += "/" + a.Rule
	}
	if a.Sender != "" {
		s += " by " + a.Sender
	}
	return strings.TrimSpace(s)
}

func more(shown, total int) string {
	if total > shown {
		return fmt.Sprintf("... and %d more\n", total-shown)
	}
	return ""
}

func renderText(out io.Writer, r api.Report) error {
	var b strings.Builder
	fmt.Fprintf(&b, "parry report for %s\n", orDash(r.Host))
	fmt.Fprintf(&b, "window:      %s to %s\n", ts(r.From), ts(r.To))
	fmt.Fprintf(&b, "audit chain: %s\n", chainLine(r.Chain))
	if r.Malformed > 0 {
		fmt.Fprintf(&b, "malformed:   %d lines skipped\n", r.Malformed)
	}
	t := r.Totals
	fmt.Fprintf(&b, "\nSummary\n")
	tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
	for _, kv := range [][2]any{{"blocks", fmt.Sprintf("%d (%d targets)", t.Blocks, t.Targets)}, {"unblocks", t.Unblocks},
		{"expired", t.Expired}, {"refused", t.Refused}, {"lockdowns", t.Lockdowns}, {"releases", t.Releases},
		{"signals", t.Signals}, {"findings", t.Findings}, {"evidence", t.Evidence}, {"dry runs", t.DryRuns},
		{"table re-asserted", fmt.Sprintf("%d (%d found missing)", t.Reconciles, t.TableHealed)}} {
		fmt.Fprintf(tw, "  %s\t%v\n", kv[0], kv[1])
	}
	tw.Flush()
	section := func(title string, n int, rows func(tw *tabwriter.Writer)) {
		fmt.Fprintf(&b, "\n%s\n", title)
		if n == 0 {
			fmt.Fprintf(&b, "  none\n")
			return
		}
		tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
		rows(tw)
		tw.Flush()
	}
	actions := func(rows []api.ReportAction) func(*tabwriter.Writer) {
		return func(tw *tabwriter.Writer) {
			for _, a := range rows {
				extra := a.Reason
				if a.Error != "" {
					extra = a.Error
				}
				if a.Conns > 0 {
					extra += fmt.Sprintf(" [%d connections at block time]", a.Conns)
				}
				fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s\t%s\n", ts(a.Time), verb(a), orDash(targets(a.Targets)), orDash(a.Until), orDash(cell(who(a))), cell(extra))
			}
		}
	}
	section("Blocks", len(r.Blocks), actions(r.Blocks))
	b.WriteString(more(len(r.Blocks), t.Blocks))
	section("Unblocks", len(r.Unblocks), actions(r.Unblocks))
	section("Lockdowns", len(r.Lockdowns), actions(r.Lockdowns))
	section("Refused", len(r.Refused), actions(r.Refused))
	counts := func(cs []api.ReportCount) func(*tabwriter.Writer) {
		return func(tw *tabwriter.Writer) {
			for _, c := range cs {
				fmt.Fprintf(tw, "  %s\t%d\n", cell(c.Key), c.N)
			}
		}
	}
	section("Signals by kind", len(r.ByKind), counts(r.ByKind))
	section("Signals by sender", len(r.BySender), counts(r.BySender))
	section("Top sources", len(r.Sources), func(tw *tabwriter.Writer) {
		fmt.Fprintf(tw, "  address\tsignals\tblocks\n")
		for _, s := range r.Sources {
			fmt.Fprintf(tw, "  %s\t%d\t%d\n", s.Addr, s.Signals, s.Blocks)
		}
	})
	section("Integrity findings", len(r.Findings), func(tw *tabwriter.Writer) {
		for _, f := range r.Findings {
			fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\n", ts(f.Time), orDash(f.Severity), cell(f.Path), cell(f.Detail))
		}
	})
	section("Evidence", len(r.Evidence), func(tw *tabwriter.Writer) {
		for _, e := range r.Evidence {
			fmt.Fprintf(tw, "  %s\t%s\t%s\tsha256:%s\t%s\n", ts(e.Time), e.ID, orDash(e.Trigger), e.SHA256, cell(e.Reason))
		}
	})
	_, err := io.WriteString(out, b.String())
	return err
}

// cell keeps free text (reasons, user names, file names: chosen by others)
// on its row of a text table: newline, CR and tab are written as \n, \r, \t.
func cell(s string) string {
	return strings.NewReplacer("\n", `\n`, "\r", `\r`, "\t", `\t`).Replace(s)
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// md escapes text for a Markdown table cell.
func md(s string) string {
	s = strings.NewReplacer("|", `\|`, "\n", " ", "\r", " ", "`", "'").Replace(s)
	if s == "" {
		return "—"
	}
	return s
}

func renderMarkdown(out io.Writer, r api.Report) error {
	var b strings.Builder
	fmt.Fprintf(&b, "## parry incident report — %s\n\n", md(r.Host))
	fmt.Fprintf(&b, "- **Window:** %s → %s\n", ts(r.From), ts(r.To))
	fmt.Fprintf(&b, "- **Audit chain:** %s\n", md(chainLine(r.Chain)))
	if r.Malformed > 0 {
		fmt.Fprintf(&b, "- **Malformed lines skipped:** %d\n", r.Malformed)
	}
	t := r.Totals
	fmt.Fprintf(&b, "\n### Summary\n\n| | count |\n|---|---:|\n")
	for _, kv := range [][2]any{{"Blocks", t.Blocks}, {"Blocked targets", t.Targets}, {"Unblocks", t.Unblocks}, {"Expired", t.Expired},
		{"Refused", t.Refused}, {"Lockdowns", t.Lockdowns}, {"Releases", t.Releases}, {"Signals", t.Signals},
		{"Integrity findings", t.Findings}, {"Evidence snapshots", t.Evidence}, {"Dry runs", t.DryRuns},
		{"Table re-asserted", t.Reconciles}, {"Table found missing", t.TableHealed}} {
		fmt.Fprintf(&b, "| %s | %d |\n", kv[0], kv[1])
	}
	actions := func(title string, rows []api.ReportAction, total int) {
		fmt.Fprintf(&b, "\n### %s\n\n", title)
		if len(rows) == 0 {
			b.WriteString("None.\n")
			return
		}
		b.WriteString("| time (UTC) | action | targets | until | by | reason |\n|---|---|---|---|---|---|\n")
		for _, a := range rows {
			reason := a.Reason
			if a.Error != "" {
				reason = a.Error
			}
			if a.Conns > 0 {
				reason += fmt.Sprintf(" (%d connections at block time)", a.Conns)
			}
			fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %s |\n", ts(a.Time), md(verb(a)), md(targets(a.Targets)), md(a.Until), md(who(a)), md(reason))
		}
		if total > len(rows) {
			fmt.Fprintf(&b, "\n…and %d more.\n", total-len(rows))
		}
	}
	actions("Blocks", r.Blocks, t.Blocks)
	actions("Unblocks", r.Unblocks, len(r.Unblocks))
	actions("Lockdowns", r.Lockdowns, len(r.Lockdowns))
	actions("Refused", r.Refused, len(r.Refused))
	counts := func(title string, cs []api.ReportCount) {
		fmt.Fprintf(&b, "\n### %s\n\n", title)
		if len(cs) == 0 {
			b.WriteString("None.\n")
			return
		}
		b.WriteString("| | count |\n|---|---:|\n")
		for _, c := range cs {
			fmt.Fprintf(&b, "| %s | %d |\n", md(c.Key), c.N)
		}
	}
	counts("Signals by kind", r.ByKind)
	counts("Signals by sender", r.BySender)
	b.WriteString("\n### Top sources\n\n")
	if len(r.Sources) == 0 {
		b.WriteString("None.\n")
	} else {
		b.WriteString("| address | signals | blocks |\n|---|---:|---:|\n")
		for _, s := range r.Sources {
			fmt.Fprintf(&b, "| %s | %d | %d |\n", md(s.Addr), s.Signals, s.Blocks)
		}
	}
	b.WriteString("\n### Integrity findings\n\n")
	if len(r.Findings) == 0 {
		b.WriteString("None.\n")
	} else {
		b.WriteString("| time (UTC) | severity | path | detail |\n|---|---|---|---|\n")
		for _, f := range r.Findings {
			fmt.Fprintf(&b, "| %s | %s | `%s` | %s |\n", ts(f.Time), md(f.Severity), strings.ReplaceAll(md(f.Path), "`", "'"), md(f.Detail))
		}
	}
	b.WriteString("\n### Evidence\n\n")
	if len(r.Evidence) == 0 {
		b.WriteString("None.\n")
	} else {
		b.WriteString("| time (UTC) | id | trigger | sha256 | reason |\n|---|---|---|---|---|\n")
		for _, e := range r.Evidence {
			fmt.Fprintf(&b, "| %s | `%s` | %s | `%s` | %s |\n", ts(e.Time), md(e.ID), md(e.Trigger), md(e.SHA256), md(e.Reason))
		}
		b.WriteString("\nCheck a snapshot against the chain with `parry evidence show ID`.\n")
	}
	_, err := io.WriteString(out, b.String())
	return err
}
