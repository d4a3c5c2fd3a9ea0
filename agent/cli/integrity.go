package cli

import (
	"errors"
	"fmt"
	"github.com/parryhq/parry/agent/api"
	"io"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"
)

func (a *App) integrityCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "integrity",
		Short: "File integrity and permission watching",
		Long: `parryd records the state of the configured paths (integrity.paths; by
default /etc, /usr/bin, /usr/sbin, /usr/lib/systemd, /root/.ssh) in a
baseline, watches them in real time, and reports every change within a
second: journal, audit log, and 'parry integrity status'. Permission rules
(integrity.rules) are checked on every change and every scan.

Examples:
  parry integrity baseline            # record the current state (digest into the audit log)
  parry integrity check               # compare everything now; exit 1 if anything changed
  parry integrity check --json
  parry integrity status              # watches, last scan, open findings
  parry integrity accept /etc/hosts   # the current state of /etc/hosts is the new normal
  parry integrity verify-packages     # every dpkg-installed file against dpkg's md5 sums (no daemon)

See docs/integrity.md for the configuration.`,
	}
	cmd.AddCommand(a.integrityBaselineCmd(), a.integrityCheckCmd(), a.integrityStatusCmd(), a.integrityAcceptCmd(),
		a.integrityVerifyPackagesCmd())
	return cmd
}

func (a *App) integrityBaselineCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "baseline",
		Short: "Record the current state of the watched paths as the baseline",
		Long: `Scan every configured path now and store the result as the integrity
baseline. Its digest goes into the audit chain; a baseline file that no
longer matches it is refused as tampered. Open findings are cleared.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var res api.BaselineResult
			if err := a.call(map[string]any{"op": "integrity_baseline"}, &res); err != nil {
				return err
			}
			if asJSON {
				return printResult(a.Stdout, true, res)
			}
			fmt.Fprintf(a.Stdout, "baseline recorded: %d entries in %s\ndigest: %s\n", res.Entries, res.Took.Round(time.Millisecond), res.Digest)
			if n := len(res.Unreadable); n > 0 {
				fmt.Fprintf(a.Stdout, "%d entries could not be read completely, e.g. %s\n", n, oneLine(res.Unreadable[0]))
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func (a *App) integrityCheckCmd() *cobra.Command {
	var asJSON, fullDiff bool
	cmd := &cobra.Command{
		Use:   "check",
		Short: "Compare the watched paths with the baseline now",
		Long: `Scan every configured path now and compare it with the baseline: every
attribute (type, mode, owner, group, size, times, inode, links, symlink
target, xattrs, content hash), permission rules, and dpkg's record of
package files. Prints every current deviation.

Exit status: 0 nothing changed, 1 changes found (or the check failed),
2 usage error.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var res api.IntegrityCheck
			if err := a.call(map[string]any{"op": "integrity_check"}, &res); err != nil {
				return err
			}
			if asJSON {
				if err := printResult(a.Stdout, res.Clean, res); err != nil {
					return err
				}
			} else {
				printFindings(a.Stdout, res.Findings, fullDiff, false)
				fmt.Fprintf(a.Stdout, "checked in %s: %s\n", res.TookNs.Round(time.Millisecond), countOf(len(res.Findings), "finding"))
			}
			if !res.Clean {
				return &exitError{code: ExitFailed, quiet: true, err: errors.New("integrity changes found")}
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	cmd.Flags().BoolVar(&fullDiff, "diff", false, "print whole diffs (default: the first 20 lines of each)")
	return cmd
}

func (a *App) integrityStatusCmd() *cobra.Command {
	var asJSON, fullDiff bool
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show watched paths, watches in use, the last scan and open findings",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var st api.IntegrityStatus
			if err := a.call(map[string]any{"op": "integrity_status"}, &st); err != nil {
				return err
			}
			if asJSON {
				return printResult(a.Stdout, true, st)
			}
			w := a.Stdout
			state := "watching"
			switch {
			case !st.Enabled:
				state = "disabled (integrity.enabled: false)"
			case st.Error != "":
				state = "NOT WATCHING: " + st.Error
			case !st.Running:
				state = "starting"
			}
			fmt.Fprintf(w, "integrity: %s\n", state)
			fmt.Fprintf(w, "paths: %v\n", st.Roots)
			fmt.Fprintf(w, "watches: %s (%d could not be watched), %s, %s\n",
				countOf(st.Watches, "directory"), st.WatchFailures, countOf(int(st.Events), "event"), countOf(st.Overflows, "overflow"))
			if st.BaselineDigest != "" {
				fmt.Fprintf(w, "baseline: %s, recorded %s, content hash %s, digest %s\n", countOf(st.BaselineEntries, "entry"),
					st.BaselineTime.Local().Format(time.RFC3339), st.Hash, st.BaselineDigest)
			} else {
				fmt.Fprintln(w, "baseline: none (run 'parry integrity baseline')")
			}
			if !st.LastScan.IsZero() {
				kind := "full"
				if st.LastScanFast {
					kind = "fast" // re-read only what changed by its metadata
				}
				fmt.Fprintf(w, "last check: %s, %s (took %s)\n", st.LastScan.Local().Format(time.RFC3339), kind, st.LastScanTook.Round(time.Millisecond))
				if st.LastScanFast && !st.LastFullScan.IsZero() {
					fmt.Fprintf(w, "last full check: %s\n", st.LastFullScan.Local().Format(time.RFC3339))
				}
			}
			fmt.Fprintf(w, "open findings: %d", len(st.Open))
			if st.Aggregated > 0 {
				fmt.Fprintf(w, " (%d more aggregated into burst findings)", st.Aggregated)
			}
			if st.OpenDropped > 0 {
				fmt.Fprintf(w, " (%d not kept: integrity.max_open_findings %d reached)", st.OpenDropped, st.MaxOpenFindings)
			}
			fmt.Fprintln(w)
			if st.Attribution != "" && st.Attribution != "off" {
				fmt.Fprintf(w, "attribution: %s\n", oneLine(st.Attribution))
			}
			if st.Copies > 0 || st.CopiesDropped > 0 {
				fmt.Fprintf(w, "content copies: %s, %d KiB (%d dropped to stay under the bound)\n", countOf(st.Copies, "file"), st.CopiesBytes>>10, st.CopiesDropped)
			}
			printFindings(w, st.Open, fullDiff, st.Attribution != "" && st.Attribution != "off")
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	cmd.Flags().BoolVar(&fullDiff, "diff", false, "print whole diffs (default: the first 20 lines of each)")
	return cmd
}

func (a *App) integrityAcceptCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "accept PATH...",
		Short: "Take the current state of these paths into the baseline",
		Long: `Record the current state of each PATH (a directory with everything below
it) in the baseline, so that its changes are no longer reported. The new
baseline digest goes into the audit chain, with who accepted what.`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			paths := make([]string, len(args))
			for i, p := range args {
				abs, err := filepath.Abs(p)
				if err != nil {
					return usageErr("%s: %v", p, err)
				}
				paths[i] = abs
			}
			var res struct {
				Digest   string   `json:"digest"`
				Accepted []string `json:"accepted"`
			}
			if err := a.call(map[string]any{"op": "integrity_accept", "paths": paths}, &res); err != nil {
				return err
			}
			if asJSON {
				return printResult(a.Stdout, true, res)
			}
			fmt.Fprintf(a.Stdout, "accepted %s; baseline digest now %s\n", countOf(len(res.Accepted), "path"), res.Digest)
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

// shownDiffLines is how much of a finding's diff is printed without --diff.
const shownDiffLines = 20

// printFindings prints findings; unknownActor says "actor unknown" for a
// file finding without one (attribution is on, but did not name anyone).
func printFindings(w io.Writer, fs []api.Finding, fullDiff, unknownActor bool) {
	for _, f := range fs {
		fmt.Fprintf(w, "%-8s %-14s %s\n", f.Severity, f.Kind, oneLine(f.Path))
		for _, c := range f.Changes {
			fmt.Fprintf(w, "           %-7s %s → %s\n", c.Attr, dash(oneLine(c.Old)), dash(oneLine(c.New)))
		}
		if len(f.Changes) == 0 && f.Detail != "" {
			fmt.Fprintf(w, "           %s\n", oneLine(f.Detail))
		}
		if f.Package != "" {
			fmt.Fprintf(w, "           matches dpkg package %s\n", f.Package)
		}
		if f.Remediation != "" {
			fmt.Fprintf(w, "           remediated: %s\n", oneLine(f.Remediation))
		}
		if f.Actor != nil {
			fmt.Fprintf(w, "           by %s\n", oneLine(f.Actor.String()))
		} else if unknownActor && fileKinds[f.Kind] {
			fmt.Fprintln(w, "           actor unknown")
		}
		printDiff(w, f, fullDiff)
	}
}

// fileKinds are the findings about a file's state, which have an actor
// when attribution knows one.
var fileKinds = map[string]bool{"added": true, "removed": true, "changed": true, "permission": true, "package_update": true}

// printDiff prints f's diff: "- old", "+ new", "  context". Lines come
// from the file (hostile): newlines and carriage returns are shown as \n
// and \r, and every other control character is escaped by termSafe.
func printDiff(w io.Writer, f api.Finding, full bool) {
	if f.ContentNote != "" {
		fmt.Fprintf(w, "           %s\n", oneLine(f.ContentNote))
	}
	esc := strings.NewReplacer("\n", `\n`, "\r", `\r`)
	for i, l := range f.Diff {
		if !full && i == shownDiffLines {
			fmt.Fprintf(w, "           … %d more lines (parry integrity status --diff)\n", len(f.Diff)-i+f.DiffOmitted)
			return
		}
		if strings.HasPrefix(l, "@@") || l == "" {
			fmt.Fprintf(w, "           %s\n", esc.Replace(l))
			continue
		}
		fmt.Fprintf(w, "           %c %s\n", l[0], esc.Replace(l[1:]))
	}
	if f.DiffOmitted > 0 {
		fmt.Fprintf(w, "           … %d more lines not kept\n", f.DiffOmitted)
	}
}

// countOf is "1 entry", "2 entries", "3 paths".
func countOf(n int, what string) string {
	switch {
	case n == 1:
		return "1 " + what
	case strings.HasSuffix(what, "y"):
		return fmt.Sprintf("%d %sies", n, strings.TrimSuffix(what, "y"))
	}
	return fmt.Sprintf("%d %ss", n, what)
}
