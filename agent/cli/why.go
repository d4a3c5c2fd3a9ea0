package cli

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/parryhq/parry/agent/api"
	"github.com/spf13/cobra"
)

func (a *App) whyCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "why ADDR",
		Short: "Show why an address is blocked: the covering blocks, their decisions and causes",
		Long: `Show the active blocks covering ADDR (broadest first), and for each the
decision that made it (who, when, why, until when) and the signals that
caused it. Read from parryd's memory and store; exit 1 when nothing covers
ADDR.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var w api.Why
			if err := a.call(map[string]any{"op": "why", "addr": args[0]}, &w); err != nil {
				return err
			}
			if asJSON {
				if w.Blocks == nil {
					w.Blocks = []api.WhyBlock{}
				}
				if err := printResult(a.Stdout, len(w.Blocks) > 0, w); err != nil {
					return err
				}
			} else {
				printWhy(a, w)
			}
			if len(w.Blocks) == 0 {
				return &exitError{code: ExitFailed, quiet: true, err: fmt.Errorf("%s is not blocked", w.Addr)}
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func printWhy(a *App, w api.Why) {
	out := a.Stdout
	if len(w.Blocks) == 0 {
		fmt.Fprintf(out, "%s is not blocked\n", w.Addr)
		return
	}
	fmt.Fprintf(out, "%s is blocked by %s:\n", w.Addr, plural(len(w.Blocks), "block"))
	now := time.Now()
	for _, b := range w.Blocks {
		left := "never ends"
		if !b.Until.IsZero() {
			left = "ends in " + api.FormatDuration(b.Until.Sub(now).Truncate(time.Second))
		}
		origin := b.Origin
		if origin == "" {
			origin = "local"
		}
		fmt.Fprintf(out, "\n%s (%s)\n", b.Target, left)
		fmt.Fprintf(out, "  decision %s, %s, source %s, origin %s", b.ID, b.Decided.Local().Format(time.RFC3339), dash(oneLine(b.Source)), oneLine(origin))
		if b.Admin {
			fmt.Fprint(out, ", an admin's (only an admin lifts it)")
		}
		fmt.Fprintln(out)
		fmt.Fprintf(out, "  reason: %s\n", dash(oneLine(b.Reason)))
		if b.Rule != "" {
			fmt.Fprintf(out, "  rule: %s\n", oneLine(b.Rule))
		}
		if b.Sender != "" {
			fmt.Fprintf(out, "  asked by: %s\n", oneLine(b.Sender))
		}
		if b.Country != "" || b.ASN != 0 {
			fmt.Fprintf(out, "  where: %s AS%d %s\n", dash(b.Country), b.ASN, oneLine(b.ASOrg))
		}
		var sigs []map[string]any
		if json.Unmarshal(b.Cause, &sigs) == nil && len(sigs) > 0 {
			fmt.Fprintf(out, "  caused by %s:\n", plural(len(sigs), "signal"))
			for i, s := range sigs {
				if i == 10 {
					fmt.Fprintf(out, "    ... and %d more (parry why --json)\n", len(sigs)-10)
					break
				}
				line, _ := json.Marshal(s)
				fmt.Fprintf(out, "    %s\n", oneLine(string(line)))
			}
		}
	}
}
