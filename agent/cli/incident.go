package cli

import (
	"fmt"
	"github.com/parryhq/parry/agent/api"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/parryhq/parry/agent/cli/reportfmt"
	"github.com/spf13/cobra"
)

// incidentCmds are the incident-response commands (docs/incident.md).
func (a *App) incidentCmds() []*cobra.Command {
	return []*cobra.Command{a.evidenceCmd(), a.reportCmd(), a.checkCmd()}
}

func (a *App) evidenceCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "evidence",
		Short: "Capture and inspect host snapshots kept as evidence",
		Long: `Evidence is a snapshot of the host: processes (pid, parent, user, executable,
command line, start time), network connections with their owning processes,
listening sockets, logged-in users, load, uptime, boot time, and parryd's
view (active blocks, lockdown, recent integrity findings).

Each snapshot is written once as JSON under <state_dir>/evidence/ (mode 0400)
and its SHA-256 goes into the audit chain; list and show compare the file
with the recorded hash. parryd also captures automatically when a lockdown
starts or a critical integrity finding arrives.`,
	}
	cmd.AddCommand(a.evidenceCaptureCmd(), a.evidenceListCmd(), a.evidenceShowCmd())
	return cmd
}

func (a *App) evidenceCaptureCmd() *cobra.Command {
	var reason string
	var asJSON bool
	cmd := &cobra.Command{
		Use:     "capture --reason TEXT",
		Short:   "Take a snapshot of the host now",
		Example: `  parry evidence capture --reason "suspicious outbound traffic, ticket #42"`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if strings.TrimSpace(reason) == "" {
				return usageErr("--reason is required: say why (it is kept with the snapshot)")
			}
			var resp struct {
				Evidence api.EvidenceRecord `json:"evidence"`
			}
			if err := a.call(map[string]any{"op": "evidence_capture", "reason": reason}, &resp); err != nil {
				return err
			}
			if asJSON {
				return printResult(a.Stdout, true, resp.Evidence)
			}
			r := resp.Evidence
			fmt.Fprintf(a.Stdout, "evidence %s written: %s (%d bytes)\nsha256 %s (recorded in the audit chain)\n", r.ID, r.Path, r.Size, r.SHA256)
			return nil
		},
	}
	cmd.Flags().StringVar(&reason, "reason", "", "why the snapshot is taken (required)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func intact(e api.EvidenceInfo) string {
	switch {
	case e.Intact:
		return "intact"
	case e.Recorded == "":
		return "NOT IN AUDIT LOG"
	case e.Recorded != e.SHA256:
		return "MODIFIED"
	default:
		return "MODE " + e.Mode
	}
}

func (a *App) evidenceListCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List evidence snapshots, checked against the audit chain",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var resp struct {
				Count    int                `json:"count"`
				Evidence []api.EvidenceInfo `json:"evidence"`
			}
			if err := a.call(map[string]any{"op": "evidence_list"}, &resp); err != nil {
				return err
			}
			if asJSON {
				if resp.Evidence == nil {
					resp.Evidence = []api.EvidenceInfo{}
				}
				return printResult(a.Stdout, true, resp)
			}
			if resp.Count == 0 {
				fmt.Fprintln(a.Stdout, "no evidence captured")
				return nil
			}
			tw := tabwriter.NewWriter(a.Stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tTIME\tTRIGGER\tSIZE\tSTATE\tREASON")
			bad := 0
			for _, e := range resp.Evidence {
				if !e.Intact {
					bad++
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%s\n", e.ID, e.Time.Local().Format(time.DateTime), dash(e.Trigger), e.Size, intact(e), dash(oneLine(e.Reason)))
			}
			if err := tw.Flush(); err != nil {
				return err
			}
			if bad > 0 {
				return &exitError{code: ExitFailed, err: fmt.Errorf("%d snapshot(s) do not match the audit chain", bad)}
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func (a *App) evidenceShowCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "show ID",
		Short: "Show one snapshot and whether it matches its recorded hash",
		Long:  "Show one snapshot: a summary, or the whole file with --json.\nExit status 1 when the file no longer matches the hash in the audit chain.",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var resp struct {
				Info     api.EvidenceInfo `json:"info"`
				Snapshot api.Snapshot     `json:"snapshot"`
			}
			if err := a.call(map[string]any{"op": "evidence_show", "evidence_id": args[0]}, &resp); err != nil {
				return err
			}
			if asJSON {
				if err := printResult(a.Stdout, resp.Info.Intact, resp); err != nil {
					return err
				}
			} else {
				printSnapshot(a, resp.Info, &resp.Snapshot)
			}
			if !resp.Info.Intact {
				return &exitError{code: ExitFailed, quiet: asJSON, err: fmt.Errorf("evidence %s: %s", args[0], intact(resp.Info))}
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the whole snapshot as JSON")
	return cmd
}

func printSnapshot(a *App, e api.EvidenceInfo, s *api.Snapshot) {
	w := a.Stdout
	fmt.Fprintf(w, "evidence %s (%s)\n", e.ID, intact(e))
	fmt.Fprintf(w, "  file     %s, mode %s, sha256 %s\n", e.Path, e.Mode, e.SHA256)
	fmt.Fprintf(w, "  taken    %s on %s, in %s; trigger %s\n", s.Started.Local().Format(time.RFC3339), dash(s.Hostname), s.Duration.Round(time.Millisecond), dash(s.Trigger))
	fmt.Fprintf(w, "  reason   %s\n", dash(oneLine(s.Reason)))
	if s.Incomplete || len(s.Errors) > 0 {
		fmt.Fprintf(w, "  INCOMPLETE: %s\n", strings.Join(s.Errors, "; "))
	}
	fmt.Fprintf(w, "  host     booted %s, load %.2f %.2f %.2f, %d users logged in\n", s.BootTime.Local().Format(time.RFC3339), s.Load.Load1, s.Load.Load5, s.Load.Load15, len(s.Users))
	fmt.Fprintf(w, "  counts   %d processes, %d connections, %d listening, %d active blocks, %d findings\n",
		s.ProcessesTotal, s.ConnectionsTotal, len(s.Listening), s.BlocksTotal, len(s.Findings))
	if s.Lockdown != nil {
		fmt.Fprintf(w, "  lockdown until %s (%s)\n", s.Lockdown.Until.Local().Format(time.RFC3339), dash(oneLine(s.Lockdown.Reason)))
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	if len(s.Connections) > 0 {
		fmt.Fprintln(tw, "\nPROTO\tLOCAL\tREMOTE\tSTATE\tPID\tPROCESS")
		for i, c := range s.Connections {
			if i == 20 {
				fmt.Fprintf(tw, "... %d more (--json for all)\n", len(s.Connections)-20)
				break
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\n", c.Proto, c.Local, c.Remote, dash(c.State), c.PID, dash(oneLine(c.Name)))
		}
	}
	if len(s.Listening) > 0 {
		fmt.Fprintln(tw, "\nLISTEN\tPROTO\tPID\tPROCESS")
		for _, c := range s.Listening {
			fmt.Fprintf(tw, "%s\t%s\t%d\t%s\n", c.Local, c.Proto, c.PID, dash(oneLine(c.Name)))
		}
	}
	tw.Flush()
}

func (a *App) reportCmd() *cobra.Command {
	var since, format string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "report [--since 24h] [--format text|markdown|html|json]",
		Short: "Summarise the audit log for an incident ticket",
		Long: `Summarise the audit log of the last --since: blocks and unblocks, refusals,
signals by kind and sender, top sources, lockdowns, integrity findings,
evidence captured, and the result of verifying the audit chain.

--format markdown is what you paste into an incident ticket. --format html
is one self-contained page (inline CSS and SVG charts, no script, nothing
fetched): signals, blocks and findings over time with lockdowns shaded, the
top sources, kinds, detectors and rules, and the tables. Long lists are
capped at 50 rows; the totals are not.`,
		Example: `  parry report
  parry report --since 7d --format markdown > incident.md
  parry report --since 24h --format html > day.html`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if asJSON {
				format = reportfmt.FormatJSON
			}
			switch format {
			case reportfmt.FormatText, reportfmt.FormatMarkdown, "md", reportfmt.FormatHTML, reportfmt.FormatJSON:
			default:
				return usageErr("--format %q: want text, markdown, html or json", format)
			}
			if d, err := api.ParseDuration(since); err != nil || d <= 0 {
				return usageErr("--since %q: want a duration such as 24h or 7d", since)
			}
			var resp struct {
				Report api.Report `json:"report"`
			}
			if err := a.call(map[string]any{"op": "report", "since": since}, &resp); err != nil {
				return err
			}
			c := resp.Report.Chain
			if format == reportfmt.FormatJSON {
				// The report with "ok" first, as every --json answer (ok: the chain is not broken).
				if err := printResult(a.Stdout, !c.Checked || c.OK, resp.Report); err != nil {
					return err
				}
			} else if err := reportfmt.Render(a.Stdout, resp.Report, format); err != nil {
				return err
			}
			if c.Checked && !c.OK {
				return &exitError{code: ExitFailed, quiet: true, err: fmt.Errorf("audit chain broken")}
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&since, "since", "24h", "how far back (90m, 24h, 7d)")
	cmd.Flags().StringVar(&format, "format", "text", "text, markdown, html or json")
	cmd.Flags().BoolVar(&asJSON, "json", false, "same as --format json")
	return cmd
}

func (a *App) checkCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "check",
		Short: "Audit this host's security posture",
		Long: `Audit this host's own posture (parryd runs the checks, as root): private keys,
.env files and /etc/shadow readable by other users, sshd's PermitRootLogin and
PasswordAuthentication, TLS certificates expiring within 30 days, parry's own
config, state and socket permissions, and whether parry's table is in place.
Each finding has a severity and the fix.

Exit status by the worst finding: 0 none (or info only), 3 low, 4 medium,
5 high, 6 critical; 1 the check could not run, 2 usage error.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var resp struct {
				Check api.CheckReport `json:"check"`
			}
			if err := a.call(map[string]any{"op": "check"}, &resp); err != nil {
				return err
			}
			rep := resp.Check
			if asJSON {
				if err := printResult(a.Stdout, api.CheckExitCode(rep.Worst, len(rep.Findings) > 0) == 0, rep); err != nil {
					return err
				}
			} else if len(rep.Findings) == 0 {
				fmt.Fprintln(a.Stdout, "no findings")
			} else {
				for _, f := range rep.Findings {
					fmt.Fprintf(a.Stdout, "%-8s %s  %s\n         %s\n         fix: %s\n", strings.ToUpper(f.Severity.String()), f.ID, oneLine(f.Path), oneLine(f.Message), f.Fix)
				}
			}
			if code := api.CheckExitCode(rep.Worst, len(rep.Findings) > 0); code != 0 {
				return &exitError{code: code, quiet: true, err: fmt.Errorf("worst finding: %s", rep.Worst)}
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}
