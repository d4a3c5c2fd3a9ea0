package cli

import (
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/parryhq/parry/agent/api"
	"github.com/spf13/cobra"
)

func (a *App) feedCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "feed",
		Short: "Blocklist feeds: list them, refresh one now",
		Long:  "Blocklist feeds (feeds: in parry.yaml, docs/feeds.md). Their blocks are marked feed:NAME.",
		Args:  cobra.NoArgs,
		RunE:  func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
	}
	cmd.AddCommand(a.feedListCmd(), a.feedRefreshCmd())
	return cmd
}

func (a *App) feedListCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "list",
		Short: "Show the configured feeds: entries, last refresh, next, errors, stale",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var resp api.FeedList
			if err := a.call(map[string]any{"op": "feed_list"}, &resp); err != nil {
				return err
			}
			if asJSON {
				if resp.Feeds == nil {
					resp.Feeds = []api.FeedInfo{}
				}
				return printResult(a.Stdout, true, resp)
			}
			if len(resp.Feeds) == 0 {
				fmt.Fprintln(a.Stdout, "no feeds configured (feeds: in parry.yaml)")
				return nil
			}
			for i, fi := range resp.Feeds {
				if i > 0 {
					fmt.Fprintln(a.Stdout)
				}
				printFeed(a.Stdout, fi, time.Now())
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func (a *App) feedRefreshCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "refresh NAME",
		Short: "Refresh a feed now and show the outcome",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var fi api.FeedInfo
			if err := a.call(map[string]any{"op": "feed_refresh", "name": args[0]}, &fi); err != nil {
				return err
			}
			if asJSON {
				return printResult(a.Stdout, true, fi)
			}
			printFeed(a.Stdout, fi, time.Now())
			if fi.LastError != "" || (fi.LastApply != nil && fi.LastApply.Error != "") {
				return &exitError{code: ExitFailed, err: fmt.Errorf("feed %s: refresh failed; the last good state stays", fi.Name)}
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

// printFeed writes one feed's status. Source, errors and bad lines are
// outside text: kept on their line.
func printFeed(w io.Writer, fi api.FeedInfo, now time.Time) {
	when := func(t time.Time) string {
		if t.IsZero() {
			return "never"
		}
		d := now.Sub(t).Truncate(time.Second)
		if d < 0 {
			return "in " + api.FormatDuration(-d)
		}
		return api.FormatDuration(d) + " ago"
	}
	state := "ok"
	switch {
	case fi.Stale:
		state = "STALE (failing for longer than max_stale: entries no longer renewed)"
	case fi.LastError != "":
		state = fmt.Sprintf("FAILING (%d in a row; the last good entries are renewed)", fi.Failures)
	}
	fmt.Fprintf(w, "feed %s: %s\n", fi.Name, state)
	fmt.Fprintf(w, "  source: %s\n", oneLine(fi.Source))
	fmt.Fprintf(w, "  entries: %d (%d IPv4, %d IPv6)\n", fi.Entries, fi.Entries4, fi.Entries6)
	fmt.Fprintf(w, "  last refresh: %s, last success: %s, last change: %s, next: %s\n",
		when(fi.LastRefresh), when(fi.LastSuccess), when(fi.LastChange), when(fi.Next))
	if fi.LastError != "" {
		fmt.Fprintf(w, "  last error: %s\n", oneLine(fi.LastError))
	}
	fmt.Fprintf(w, "  last parse: %d lines, %d malformed, %d too broad, %d duplicates, %d covered\n",
		fi.Lines, fi.Malformed, fi.TooBroad, fi.Duplicates, fi.Covered)
	for _, b := range fi.Bad {
		fmt.Fprintf(w, "    line %d: %s: %s\n", b.Line, oneLine(b.Reason), oneLine(b.Text))
	}
	la := fi.LastApply
	if la == nil {
		return
	}
	if la.Error != "" {
		fmt.Fprintf(w, "  last apply (%s): FAILED, nothing changed: %s\n", when(la.At), oneLine(la.Error))
		return
	}
	fmt.Fprintf(w, "  last apply (%s): %d added, %d renewed, %d kept, %d lifted, %d left to another cause\n",
		when(la.At), la.Added, la.Renewed, la.Kept, la.Lifted, la.Others)
	if la.Carved > 0 {
		fmt.Fprintf(w, "  %d entries carved around the allowlist, own addresses or reserved ranges (blocked minus those)\n", la.Carved)
	}
	if len(la.Refused) > 0 {
		codes := make([]string, 0, len(la.Refused))
		for c := range la.Refused {
			codes = append(codes, c)
		}
		slices.Sort(codes)
		var parts []string
		for _, c := range codes {
			parts = append(parts, fmt.Sprintf("%d %s", la.Refused[c], c))
		}
		fmt.Fprintf(w, "  refused by the guard: %s\n", strings.Join(parts, ", "))
		for _, c := range codes {
			fmt.Fprintf(w, "    %s: %s\n", c, oneLine(la.Example[c]))
		}
	}
}
