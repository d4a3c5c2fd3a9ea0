package cli

import (
	"fmt"
	"github.com/parryhq/parry/agent/api"
	"net/netip"
	"strings"
	"time"

	"github.com/spf13/cobra"
)

func (a *App) signalCmd() *cobra.Command {
	var ip, user, source, severity, detail, path string
	var attrs map[string]string
	var asJSON, quiet bool
	cmd := &cobra.Command{
		Use:   "signal KIND [--ip IP] [--user NAME] [--source PROG] [--severity S] [--detail TEXT]",
		Short: "Report a threat signal to parryd's policy",
		Long: `Report what you saw: parryd's policy counts signals per kind and key (the IP,
the user, or both) within a window, and decides — block the IP, notify, or
only record. With the built-in policy, 5 auth_failure signals for one IP
within 15 minutes block it for 1 hour, longer for repeat offenders.

KIND is a free-form name the policy refers to: auth_failure, rate_exceeded,
scan_detected, ban_requested, malware_detected, integrity_violation,
data_breach_attempt have built-in rules; others are recorded only, unless a
rule in parry.yaml names them. See docs/policy.md.

Root and the admin groups may send any kind. Other users may send the kinds
response.senders in parry.yaml gives them; they cannot block or lock down.

The answer says what happened: recorded (no rule), counted (n of threshold),
or the decisions made.`,
		Example: `  parry signal auth_failure --ip 203.0.113.7 --user alice --source webapp
  parry signal scan_detected --ip 2001:db8::7 --source ids --severity high
  parry signal integrity_violation --severity critical --detail "/etc/passwd changed"`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if ip != "" {
				if _, err := netip.ParseAddr(ip); err != nil {
					return usageErr("--ip %q is not an IPv4 or IPv6 address", ip)
				}
			}
			switch severity {
			case "", "low", "medium", "high", "critical":
			default:
				return usageErr("--severity %q: want low, medium, high or critical", severity)
			}
			req := map[string]any{"op": "signal", "kind": args[0]}
			for k, v := range map[string]string{"ip": ip, "user": user, "source": source, "severity": severity, "detail": detail, "path": path} {
				if v != "" {
					req[k] = v
				}
			}
			if len(attrs) > 0 {
				req["attrs"] = attrs
			}
			var out api.SignalResult
			if err := a.call(req, &out); err != nil {
				return err
			}
			switch {
			case asJSON:
				return printResult(a.Stdout, true, out)
			case quiet:
				return nil
			}
			a.printSignal(out)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&ip, "ip", "", "the remote address it is about")
	f.StringVar(&user, "user", "", "the account it is about")
	f.StringVar(&source, "source", "", "the reporting program (e.g. webapp)")
	f.StringVar(&severity, "severity", "", "low, medium, high or critical")
	f.StringVar(&detail, "detail", "", "human text, recorded")
	f.StringVar(&path, "path", "", "a file, for integrity findings")
	f.StringToStringVar(&attrs, "attr", nil, "extra key=value recorded with the signal (repeatable)")
	f.BoolVar(&asJSON, "json", false, "print the result as JSON")
	f.BoolVarP(&quiet, "quiet", "q", false, "print nothing on success")
	return cmd
}

func (a *App) printSignal(out api.SignalResult) {
	switch out.Outcome {
	case "no_rule":
		fmt.Fprintln(a.Stdout, "recorded, no rule")
	case "counted":
		var parts []string
		for _, p := range out.Progress {
			parts = append(parts, fmt.Sprintf("%s %s: %d/%d within %s", p.Rule, oneLine(p.Key), p.Count, p.Threshold, api.FormatDuration(p.Window)))
		}
		fmt.Fprintf(a.Stdout, "counted (%s)\n", strings.Join(parts, "; "))
	}
	for _, d := range out.Decisions {
		state := "done"
		switch {
		case d.Error != nil:
			state = fmt.Sprintf("REFUSED: %s (%s)", d.Error.Message, d.Error.Code)
		case d.DryRun:
			state = "dry run, not enforced"
		}
		fmt.Fprintf(a.Stdout, "decided %s by rule %s: %s [%s] id=%s\n", d.Action, d.Rule, oneLine(d.Reason), state, d.ID)
	}
}

// printPolicy prints the policy line of status.
func (a *App) printPolicy(p api.PolicyStatus) {
	mode := ""
	if p.DryRun {
		mode = " DRY RUN (decisions recorded, not enforced),"
	}
	fmt.Fprintf(a.Stdout, "policy:%s %d rules; %d signals (%d no rule, %d rate-limited), %d decisions; %d keys counting, %d offenders remembered\n",
		mode, p.Rules, p.Signals, p.NoRule, p.RateLimited, p.Decisions, p.Keys, p.Offenders)
	if c := p.SenderBlockCap; c != nil {
		state := ""
		if c.Refusing {
			state = fmt.Sprintf(" REACHED: their blocks are refused until %s (%d refused so far)", c.WindowEnds.Local().Format(time.TimeOnly), c.Refused)
		}
		fmt.Fprintf(a.Stdout, "sender block cap: %d of %d blocks per %s from non-admin senders' signals%s; %d refused since start\n",
			c.Blocks, c.Max, c.Per, state, c.RefusedTotal)
	}
}
