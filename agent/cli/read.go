package cli

import (
	"bufio"
	"fmt"
	"github.com/parryhq/parry/agent/api"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/parryhq/parry/agent/audit"
	"github.com/spf13/cobra"
)

func (a *App) listCmd() *cobra.Command {
	var asJSON bool
	var contains, source, origin, reason, since, expiring string
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List active blocks",
		Long: `List the active blocks, in address order: target, time left, reason, source,
and origin (local, the fleet host that decided it, or feed:NAME).
Read from parryd's memory; the kernel is not queried.

Filters (all given must hold): --contains ADDR (the blocks covering it),
--source S and --origin O (exact; origin "local" is this host's own),
--reason TEXT (substring, any case), --since D (created within the last D),
--expiring D (ending within D; permanent blocks never match).`,
		Example: `  parry list --contains 198.51.100.9
  parry list --source feed:firehol1 --since 1h --expiring 10m`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var resp struct {
				Count  int             `json:"count"`
				Blocks []api.BlockInfo `json:"blocks"`
			}
			req := map[string]any{"op": "list"}
			for k, v := range map[string]string{"contains": contains, "source": source, "origin": origin,
				"reason": reason, "since": since, "expiring": expiring} {
				if v != "" {
					req[k] = v
				}
			}
			if err := a.call(req, &resp); err != nil {
				return err
			}
			if asJSON {
				if resp.Blocks == nil {
					resp.Blocks = []api.BlockInfo{}
				}
				return printResult(a.Stdout, true, resp)
			}
			if resp.Count == 0 {
				if len(req) > 1 {
					fmt.Fprintln(a.Stdout, "no active block matches")
				} else {
					fmt.Fprintln(a.Stdout, "no active blocks")
				}
				return nil
			}
			bw := bufio.NewWriterSize(a.Stdout, 64<<10) // 100,000 rows: one write per 64 KiB, not per row
			tw := tabwriter.NewWriter(bw, 0, 4, 2, ' ', 0)
			geo := slices.ContainsFunc(resp.Blocks, func(b api.BlockInfo) bool { return b.Country != "" || b.ASN != 0 })
			head := "TARGET\tEXPIRES IN\tREASON\tSOURCE\tORIGIN"
			if geo {
				head += "\tCOUNTRY\tAS"
			}
			fmt.Fprintln(tw, head)
			now := time.Now()
			for _, b := range resp.Blocks {
				left := "never"
				if !b.Until.IsZero() {
					left = api.FormatDuration(b.Until.Sub(now).Truncate(time.Second))
				}
				origin := b.Origin
				if origin == "" {
					origin = "local"
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s", b.Target, left, dash(oneLine(b.Reason)), dash(oneLine(b.Source)), oneLine(origin))
				if geo {
					as := "-"
					if b.ASN != 0 {
						as = fmt.Sprintf("AS%d %s", b.ASN, oneLine(b.ASOrg))
					}
					fmt.Fprintf(tw, "\t%s\t%s", dash(b.Country), strings.TrimSpace(as))
				}
				fmt.Fprintln(tw)
			}
			if err := tw.Flush(); err != nil {
				return err
			}
			return bw.Flush()
		},
	}
	f := cmd.Flags()
	f.BoolVar(&asJSON, "json", false, "print JSON")
	f.StringVar(&contains, "contains", "", "only the blocks covering this address")
	f.StringVar(&source, "source", "", "only blocks of this source (cli, policy, feed:NAME ...)")
	f.StringVar(&origin, "origin", "", "only blocks of this origin (local, a fleet host, feed:NAME)")
	f.StringVar(&reason, "reason", "", "only blocks whose reason contains this text (any case)")
	f.StringVar(&since, "since", "", "only blocks created within the last D (90s, 1h, 7d)")
	f.StringVar(&expiring, "expiring", "", "only blocks ending within D")
	return cmd
}

// oneLine keeps free text on its row of a table: newline, CR and tab are
// written as \n, \r, \t.
func oneLine(s string) string {
	return strings.NewReplacer("\n", `\n`, "\r", `\r`, "\t", `\t`).Replace(s)
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func (a *App) statusCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show parryd's version, uptime, active blocks, lockdown and table health",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var st api.Status
			if err := a.call(map[string]any{"op": "status"}, &st); err != nil {
				return err
			}
			if asJSON {
				return printResult(a.Stdout, true, st)
			}
			fmt.Fprintf(a.Stdout, "parryd %s (pid %d), up %s\n", st.Version, st.PID, st.Uptime)
			fmt.Fprintf(a.Stdout, "active blocks: %d\n", st.ActiveBlocks)
			health := "present"
			if !st.TableHealth.Present {
				health = "MISSING (self-heal retrying: " + st.TableHealth.LastError + ")"
			}
			fmt.Fprintf(a.Stdout, "table: %s %s, rebuilt %d times\n", st.Table, health, st.TableHealth.Heals)
			a.printLockdown(st.Lockdown)
			a.printPolicy(st.Policy)
			fmt.Fprintf(a.Stdout, "state: %s (audit seq %d)\n", st.StateDir, st.AuditSeq)
			if b := st.AuditBreak; b != nil {
				fmt.Fprintf(a.Stdout, "AUDIT CHAIN BROKEN at %s: parryd had written up to seq %d; old log at line %d: %s; kept as %q (review, then `parry audit ack`)\n",
					b.Time.Format(time.RFC3339), b.AnchorSeq, b.FoundAtLine, b.Found, b.KeptAs)
			}
			if f := st.AuditFailure; f != nil {
				fmt.Fprintf(a.Stdout, "AUDIT LOG FAILING since %s (%s, %d failures): %s; changes are refused (code audit) until an append succeeds\n",
					f.Since.Format(time.RFC3339), f.Op, f.Count, f.Error)
			}
			printFleet(a.Stdout, st.Fleet)
			if s := st.Sources; s != nil {
				fmt.Fprintf(a.Stdout, "log sources: %d (parry source status)\n", s.Count)
				for _, w := range s.Warnings {
					fmt.Fprintf(a.Stdout, "WARNING: %s\n", oneLine(w))
				}
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func (a *App) auditCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "audit", Short: "Work with the audit log"}
	var asJSON bool
	var file string
	verify := &cobra.Command{
		Use:   "verify",
		Short: "Check the hash chain of the audit log",
		Long: `Check the hash chain of the audit log: every line's hash, its link to the
line before, and the sequence numbers, across all its segments (audit.log
and the older audit-<seq>.log.gz beside it). Reports the first bad line, and
the segments gone by retention (recorded in the log when they were removed);
a segment deleted, edited or replaced otherwise is a break.

By default parryd checks its own log. With --log FILE the file is checked
here, without the daemon (e.g. a copy, or while parryd is stopped): an
audit.log with the segments beside it, or one old segment alone.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var res audit.Result
			var brk *api.ChainBreak
			if file != "" {
				r, err := audit.VerifyLog(file)
				if err != nil {
					return &exitError{code: ExitFailed, err: err}
				}
				res = r
			} else {
				var resp struct {
					Audit      audit.Result    `json:"audit"`
					ChainBreak *api.ChainBreak `json:"chain_break,omitempty"`
				}
				if err := a.call(map[string]any{"op": "audit_verify"}, &resp); err != nil {
					return err
				}
				res, brk = resp.Audit, resp.ChainBreak
			}
			if asJSON {
				out := any(res)
				if brk != nil {
					out = map[string]any{"audit": res, "chain_break": brk}
				}
				if err := printResult(a.Stdout, res.OK, out); err != nil {
					return err
				}
			} else {
				printVerify(a.Stdout, res)
			}
			if !res.OK && brk != nil && res.FirstBad == 1 && res.Lines > 0 {
				return &exitError{code: ExitFailed, quiet: asJSON, err: fmt.Errorf("audit log BROKEN: %s", res.Reason)}
			}
			if !res.OK {
				at := fmt.Sprintf("line %d", res.FirstBad)
				if res.File != "" {
					at += " of " + res.File
				}
				return &exitError{code: ExitFailed, quiet: asJSON,
					err: fmt.Errorf("audit log BROKEN at %s: %s (%d lines before it are intact)", at, res.Reason, res.Lines)}
			}
			return nil
		},
	}
	verify.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	verify.Flags().StringVar(&file, "log", "", "check this audit.log (with its segments) or one old segment directly instead of asking parryd")
	ack := &cobra.Command{
		Use:   "ack",
		Short: "Acknowledge a reported audit chain break",
		Long: `Acknowledge an audit chain break that parryd found at start (audit.log was
deleted, cut short or rewritten while parryd was stopped). parryd kept the
old file as audit.log.broken-<time> in the state directory and started a new
chain; status and 'parry audit verify' report the break until it is
acknowledged. Review the kept file first. The acknowledgement is audited.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var resp struct {
				Acknowledged bool `json:"acknowledged"`
			}
			if err := a.call(map[string]any{"op": "audit_ack"}, &resp); err != nil {
				return err
			}
			if resp.Acknowledged {
				fmt.Fprintln(a.Stdout, "audit chain break acknowledged")
			} else {
				fmt.Fprintln(a.Stdout, "no audit chain break to acknowledge")
			}
			return nil
		},
	}
	cmd.AddCommand(verify, ack)
	return cmd
}

// maxRemovedShown caps the segments gone by retention that verify lists.
const maxRemovedShown = 10

// printVerify prints verify's verdict when the chain holds, and the
// segments gone by retention either way (a.Stdout escapes control
// characters of names read from a --log file).
func printVerify(w io.Writer, res audit.Result) {
	if res.OK {
		in := ""
		if res.Segments > 1 {
			in = fmt.Sprintf(" in %d segments", res.Segments)
		}
		if res.FirstSeq > 1 {
			fmt.Fprintf(w, "audit log ok: %d lines%s, chain intact (seq %d..%d)\n", res.Lines, in, res.FirstSeq, res.LastSeq)
		} else {
			fmt.Fprintf(w, "audit log ok: %d lines%s, chain intact (last seq %d)\n", res.Lines, in, res.LastSeq)
		}
	}
	if len(res.Removed) == 0 {
		if res.OK && res.FirstSeq > 1 {
			fmt.Fprintf(w, "seq 1..%d gone by retention\n", res.FirstSeq-1)
		}
		return
	}
	fmt.Fprintf(w, "gone by retention (recorded in the log): %d segments\n", len(res.Removed))
	shown := res.Removed[max(0, len(res.Removed)-maxRemovedShown):]
	if n := len(res.Removed) - len(shown); n > 0 {
		fmt.Fprintf(w, "  ... %d older\n", n)
	}
	for _, r := range shown {
		fmt.Fprintf(w, "  %s  seq %d..%d  (%s, recorded at seq %d)\n", r.Segment, r.FirstSeq, r.LastSeq, r.Reason, r.RecordSeq)
	}
}
