package cli

import (
	"fmt"
	"github.com/parryhq/parry/agent/api"
	"strings"
	"time"

	"github.com/spf13/cobra"
)

func (a *App) lockdownCmd() *cobra.Command {
	var forS, extend, reason string
	var allow []string
	var isolate, force, asJSON bool
	cmd := &cobra.Command{
		Use:   "lockdown [--for D | --extend D] [--allow CIDR]... [--isolate] [--reason TEXT] [--force]",
		Short: "Drop all inbound traffic except the allowlist, for a while",
		Long: `Lock the host down: drop every inbound packet except from loopback and the
allowlist (the configured allowlist plus --allow), until the lockdown's time
is up. Connections already open from other addresses stall too (the rules
look at addresses, not connection state), and so do the replies to this
host's own connections to them: put your own address, DNS resolvers and
monitoring on the allowlist. The kernel ends it on time even
if parryd is down, so a mistake cannot strand the host. --isolate drops
outbound traffic too, except to the allowlist: the "disconnect the system"
step of incident response.

A lockdown lasts --for (default 15m, at most 7d) and is never permanent.
Renew it before it ends with --extend D (adds D to its end), end it early
with 'parry release'. Running lockdown again replaces the active lockdown.

If the resulting allowlist would be empty, nothing could reach the host, your
current SSH session included: parry refuses unless you give --force.

Lockdowns survive parryd restarts; 'parry status' shows the active one.`,
		Example: `  parry lockdown --for 15m --allow 10.0.0.0/24 --reason "incident 42"
  parry lockdown --for 1h --isolate --allow 10.0.0.5 --reason "contain"
  parry lockdown --extend 15m
  parry lockdown --for 5m --force      # nothing allowed: console access only
  parry release`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if forS != "" && extend != "" {
				return usageErr("give either --for (a new lockdown) or --extend (the active one), not both")
			}
			for name, v := range map[string]string{"--for": forS, "--extend": extend} {
				if v == "" {
					continue
				}
				if d, err := api.ParseDuration(v); err != nil || d < time.Second {
					return usageErr("%s: %q is not a duration of at least 1s (e.g. 15m, 1h)", name, v)
				}
			}
			for _, s := range allow {
				if _, err := api.ParseTarget(s); err != nil {
					return usageErr("--allow %s: %v", s, err)
				}
			}
			req := map[string]any{"op": "lockdown", "allow": allow, "isolate": isolate, "reason": reason, "force": force}
			if forS != "" {
				req["for"] = forS
			}
			if extend != "" {
				req["extend"] = extend
			}
			var out api.LockdownResult
			if err := a.call(req, &out); err != nil {
				return err
			}
			if asJSON {
				return printResult(a.Stdout, true, out)
			}
			a.printLockdown(out.Lockdown)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&forS, "for", "", "how long (default 15m; 90s, 30m, 2h, at most 7d)")
	f.StringVar(&extend, "extend", "", "add this much to the active lockdown's end")
	f.StringSliceVar(&allow, "allow", nil, "IP or CIDR reachable during this lockdown (repeatable, or comma-separated)")
	f.BoolVar(&isolate, "isolate", false, "drop outbound traffic too, except to the allowlist")
	f.StringVar(&reason, "reason", "", "why (recorded in the audit log, shown by status)")
	f.BoolVar(&force, "force", false, "lock down even with an empty allowlist")
	f.BoolVar(&asJSON, "json", false, "print the result as JSON")
	return cmd
}

func (a *App) releaseCmd() *cobra.Command {
	var reason string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "release",
		Short: "End a lockdown now",
		Long:  "End the active lockdown now. No active lockdown is not an error.",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var out api.Outcome
			if err := a.call(map[string]any{"op": "release", "reason": reason}, &out); err != nil {
				return err
			}
			if asJSON {
				return printResult(a.Stdout, true, out)
			}
			fmt.Fprintln(a.Stdout, "lockdown: off")
			return nil
		},
	}
	cmd.Flags().StringVar(&reason, "reason", "", "why (recorded in the audit log)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the result as JSON")
	return cmd
}

// printLockdown prints a lockdown state for people.
func (a *App) printLockdown(l api.LockdownState) {
	if !l.Active {
		fmt.Fprintln(a.Stdout, "lockdown: off")
		return
	}
	left := time.Until(l.Until).Truncate(time.Second)
	fmt.Fprintf(a.Stdout, "lockdown: ACTIVE until %s (%s left)", l.Until.Local().Format(time.RFC3339), api.FormatDuration(left))
	if l.Isolate {
		fmt.Fprint(a.Stdout, ", isolated")
	}
	fmt.Fprintf(a.Stdout, ", reason: %s\n", dash(oneLine(l.Reason)))
	if len(l.Allow) > 0 {
		fmt.Fprintf(a.Stdout, "lockdown allow: %s (plus the configured allowlist)\n", strings.Join(l.Allow, " "))
	}
}
