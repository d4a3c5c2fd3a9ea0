package cli

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/parryhq/parry/agent/api"
	"io"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/parryhq/parry/agent/client"
	"github.com/parryhq/parry/firewall/droptable"
	"github.com/spf13/cobra"
)

// chunkBytes keeps each request line under parryd's 64 KiB line limit.
const chunkBytes = 60 << 10

// outcome is the answer to block and unblock.
type outcome struct {
	ID       string      `json:"decision_id"`
	Added    int         `json:"added"`
	Updated  int         `json:"updated"`
	Removed  int         `json:"removed"`
	NotFound []string    `json:"not_found"`
	Refused  []api.Error `json:"refused"`
}

func (a *App) blockCmd() *cobra.Command {
	var forS, reason, file, country, asn string
	var permanent, skipInvalid, asJSON bool
	cmd := &cobra.Command{
		Use:   "block (TARGET... | --country XX | --asn N) [--for D | --permanent] [--reason TEXT]",
		Short: "Block IPs or CIDRs",
		Long: `Block IPv4/IPv6 addresses or CIDR prefixes: packets from them are dropped on
the input and forward hooks until the block ends (the kernel ends it, even if
parryd is down). Re-blocking a blocked target sets its new expiry.

Durations are Go syntax plus d and w: 90s, 30m, 12h, 7d, 2w. Without --for the
configured default_block applies; a block that never ends needs --permanent.

--file reads one target per line ('-' for stdin; blank lines, # comments and
; comments as in Spamhaus DROP lists are skipped; CRLF is fine). Large files are sent in chunks of about 60 KiB, pipelined; each
chunk is one transaction. With --file, targets parryd refuses (allowlist,
loopback, ...) are reported and the rest are blocked.

--country and --asn block the prefixes that the admin's .mmdb files
(geoip: in parry.yaml) give for a country or an autonomous system, as one
transaction; prefixes broader than min_prefix_v4/v6 are cut into pieces of
that size, and those the guard protects are reported and the rest blocked.

parryd refuses loopback, link-local, multicast, the host's own addresses, the
allowlist, and prefixes broader than min_prefix_v4/v6 (default /16 and /32).`,
		Example: `  parry block 203.0.113.7 --for 1h --reason "ssh brute force"
  parry block 198.51.100.0/24 2001:db8::/48 --for 30m
  parry block --file bad-ips.txt --for 1d
  parry block --country XX --for 12h
  parry block --asn 64500 --for 1d
  curl -s https://example.org/feed.txt | parry block --file - --for 12h`,
		RunE: func(cmd *cobra.Command, args []string) error {
			if permanent && forS != "" {
				return usageErr("give either --for or --permanent, not both")
			}
			if forS != "" {
				d, err := api.ParseDuration(forS)
				if err != nil {
					return usageErr("--for: %v", err)
				}
				if d < time.Second {
					return usageErr("--for %s: a block lasts at least 1s (a block that never ends needs --permanent)", forS)
				}
			}
			geo := country != "" || asn != ""
			if geo && (len(args) > 0 || file != "" || (country != "" && asn != "")) {
				return usageErr("--country and --asn take no targets and no --file, and not both")
			}
			var targets []string
			if !geo {
				var err error
				if targets, err = a.gatherTargets(args, file, skipInvalid); err != nil {
					return err
				}
			}
			base := map[string]any{"op": "block", "reason": reason, "source": "cli"}
			if forS != "" {
				base["for"] = forS
			}
			if permanent {
				base["permanent"] = true
			}
			if file != "" {
				base["partial"] = true
			}
			if geo {
				base["country"], base["asn"] = country, asn
				return a.sendGeo(base, asJSON)
			}
			return a.sendChunks(base, targets, asJSON)
		},
	}
	f := cmd.Flags()
	f.StringVar(&forS, "for", "", "how long (90s, 12h, 7d, 2w); default: the configured default_block")
	f.BoolVar(&permanent, "permanent", false, "block until unblocked")
	f.StringVar(&reason, "reason", "", "why (recorded in the audit log and shown by list)")
	f.StringVar(&file, "file", "", "read targets from FILE, one per line ('-' for stdin)")
	f.BoolVar(&skipInvalid, "skip-invalid", false, "with --file: skip lines that are not IPs/CIDRs instead of refusing the file")
	f.StringVar(&country, "country", "", "block the prefixes of this country (ISO code, from geoip.country_db)")
	f.StringVar(&asn, "asn", "", "block the prefixes of this autonomous system (64500 or AS64500, from geoip.asn_db)")
	f.BoolVar(&asJSON, "json", false, "print the result as JSON")
	return cmd
}

// sendGeo sends one block of a country or an AS (parryd expands it into
// prefixes, one transaction) and reports it as block does.
func (a *App) sendGeo(base map[string]any, asJSON bool) error {
	var o outcome
	if err := a.call(base, &o); err != nil {
		return err
	}
	a.report("block", o, nil, asJSON, 1)
	if len(o.Refused) > 0 {
		return &exitError{code: ExitFailed, err: fmt.Errorf("%d refused", len(o.Refused)), quiet: asJSON}
	}
	return nil
}

func (a *App) unblockCmd() *cobra.Command {
	var file, reason string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "unblock TARGET... | --file F",
		Short: "Remove blocks",
		Long: `Remove blocks now. Give the targets exactly as blocked (a CIDR block is
removed by its CIDR). Targets that are not blocked are reported, not an error.`,
		Example: "  parry unblock 203.0.113.7\n  parry unblock --file old.txt",
		RunE: func(cmd *cobra.Command, args []string) error {
			targets, err := a.gatherTargets(args, file, false)
			if err != nil {
				return err
			}
			return a.sendChunks(map[string]any{"op": "unblock", "reason": reason, "source": "cli"}, targets, asJSON)
		},
	}
	cmd.Flags().StringVar(&file, "file", "", "read targets from FILE, one per line ('-' for stdin)")
	cmd.Flags().StringVar(&reason, "reason", "", "why (recorded in the audit log)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the result as JSON")
	return cmd
}

// gatherTargets collects targets from args and --file, checks their syntax
// locally (so a typo on line 70,000 is reported with its line number before
// anything is sent) and canonicalises them.
func (a *App) gatherTargets(args []string, file string, skipInvalid bool) ([]string, error) {
	if len(args) == 0 && file == "" {
		return nil, usageErr("give at least one target, or --file")
	}
	var out []string
	var bad []string
	add := func(where, s string) {
		p, err := api.ParseTarget(s)
		if err != nil {
			bad = append(bad, fmt.Sprintf("%s: %v", where, err))
			return
		}
		out = append(out, api.FormatTarget(p))
	}
	for i, s := range args {
		add(fmt.Sprintf("argument %d", i+1), s)
	}
	if file != "" {
		var r io.Reader = a.Stdin
		name := "stdin"
		if file != "-" {
			f, err := os.Open(file)
			if err != nil {
				return nil, &exitError{code: ExitFailed, err: err}
			}
			defer f.Close()
			r, name = f, file
		}
		sc := bufio.NewScanner(r)
		sc.Buffer(make([]byte, 64<<10), 64<<10)
		n := 1
		for ; sc.Scan(); n++ {
			line := sc.Text()
			if n == 1 {
				line = strings.TrimPrefix(line, "\ufeff") // a byte order mark from Windows tools
			}
			// '#' comments, and ';' as in Spamhaus DROP ("192.0.2.0/24 ; SBL123").
			if i := strings.IndexAny(line, "#;"); i >= 0 {
				line = line[:i]
			}
			if line = strings.TrimSpace(line); line != "" {
				add(fmt.Sprintf("%s:%d", name, n), line)
			}
		}
		if err := sc.Err(); errors.Is(err, bufio.ErrTooLong) {
			return nil, &exitError{code: ExitFailed, err: fmt.Errorf("%s:%d: line longer than 64 KiB; nothing was sent (one target per line)", name, n)}
		} else if err != nil {
			return nil, &exitError{code: ExitFailed, err: fmt.Errorf("read %s: %w", name, err)}
		}
	}
	skip := skipInvalid && file != ""
	for i, b := range bad {
		if i == 20 {
			fmt.Fprintf(a.Stderr, "... and %d more\n", len(bad)-20)
			break
		}
		if skip {
			b = "skipped " + b
		}
		fmt.Fprintln(a.Stderr, b)
	}
	if len(bad) > 0 && skip {
		fmt.Fprintf(a.Stderr, "parry: skipped %s (--skip-invalid)\n", plural(len(bad), "invalid line"))
	}
	if len(bad) > 0 && !skip {
		return nil, &exitError{code: ExitFailed, err: fmt.Errorf("%d invalid targets; nothing was sent (fix them, or --skip-invalid with --file)", len(bad))}
	}
	if len(out) == 0 {
		return nil, &exitError{code: ExitFailed, err: errors.New("no targets")}
	}
	return out, nil
}

// chunkRequests renders base plus "targets" as request lines of at most
// limit bytes each (newline excluded), splitting the targets between them;
// it also returns how many targets each line carries.
func chunkRequests(base map[string]any, targets []string, limit int) ([][]byte, []int, error) {
	head, err := json.Marshal(base)
	if err != nil {
		return nil, nil, err
	}
	prefix := append(head[:len(head)-1:len(head)-1], `,"targets":[`...)
	var reqs [][]byte
	var counts []int
	cur := append([]byte(nil), prefix...)
	n := 0
	for _, t := range targets {
		q, _ := json.Marshal(t)
		if n > 0 && len(cur)+len(q)+3 > limit {
			reqs, counts = append(reqs, append(cur, "]}"...)), append(counts, n)
			cur, n = append([]byte(nil), prefix...), 0
		}
		if n > 0 {
			cur = append(cur, ',')
		}
		cur = append(cur, q...)
		n++
	}
	return append(reqs, append(cur, "]}"...)), append(counts, n), nil
}

// sendChunks splits targets into request lines under chunkBytes, pipelines
// them on one connection and sums the outcomes. If the connection breaks
// before every chunk is answered, it says how many were acknowledged: each
// chunk is one transaction, so those are applied (or refused) as answered,
// and the others may or may not have been.
func (a *App) sendChunks(base map[string]any, targets []string, asJSON bool) error {
	reqs, counts, err := chunkRequests(base, targets, chunkBytes)
	if err != nil {
		return err
	}
	c, err := a.dial()
	if err != nil {
		return err
	}
	defer c.Close()
	var total outcome
	var failures []string
	acked, ackedTargets := 0, 0
	var decodeErr error
	err = c.Pipeline(reqs, func(i int, r client.Response) error {
		acked++
		ackedTargets += counts[i]
		if !r.OK {
			failures = append(failures, fmt.Sprintf("%s (%s)", r.Error.Message, r.Error.Code))
			return nil
		}
		var o outcome
		if err := json.Unmarshal(r.Raw, &o); err != nil {
			decodeErr = err
			return err
		}
		total.ID = o.ID
		total.Added += o.Added
		total.Updated += o.Updated
		total.Removed += o.Removed
		total.NotFound = append(total.NotFound, o.NotFound...)
		total.Refused = append(total.Refused, o.Refused...)
		return nil
	})
	if err != nil && decodeErr == nil && acked < len(reqs) {
		if acked > 0 {
			a.report(base["op"].(string), total, failures, asJSON, acked)
		}
		return &exitError{code: ExitFailed, err: fmt.Errorf("%d of %d chunks (%s) were acknowledged before the connection to parryd broke; the rest may or may not have been applied — check `parry list`: %w",
			acked, len(reqs), plural(ackedTargets, "target"), err)}
	}
	if err != nil {
		return &exitError{code: ExitFailed, err: err}
	}
	a.report(base["op"].(string), total, failures, asJSON, len(reqs))
	if base["op"] == "unblock" && !asJSON {
		a.hintCovered(total.NotFound)
	}
	if len(failures) > 0 || len(total.Refused) > 0 {
		msg := fmt.Sprintf("%d refused", len(total.Refused))
		if len(failures) > 0 {
			msg = failures[0]
			if len(reqs) > 1 {
				msg = fmt.Sprintf("%d of %d chunks failed; first: %s", len(failures), len(reqs), failures[0])
			}
		}
		return &exitError{code: ExitFailed, err: errors.New(msg), quiet: asJSON}
	}
	return nil
}

func (a *App) report(op string, o outcome, failures []string, asJSON bool, chunks int) {
	if asJSON {
		_ = printJSON(a.Stdout, map[string]any{"ok": len(failures) == 0 && len(o.Refused) == 0, "added": o.Added,
			"updated": o.Updated, "removed": o.Removed, "not_found": nonNil(o.NotFound), "refused": nonNil(o.Refused),
			"errors": nonNil(failures)})
		return
	}
	switch op {
	case "block":
		if o.Added+o.Updated > 0 {
			fmt.Fprintf(a.Stdout, "blocked %s (%d new, %d updated)\n", plural(o.Added+o.Updated, "target"), o.Added, o.Updated)
		}
	case "unblock":
		if o.Removed > 0 {
			fmt.Fprintf(a.Stdout, "unblocked %s\n", plural(o.Removed, "target"))
		}
		for _, t := range o.NotFound {
			fmt.Fprintf(a.Stdout, "%s was not blocked\n", t)
		}
	}
	for i, r := range o.Refused {
		if i == 20 {
			fmt.Fprintf(a.Stderr, "... and %d more refused\n", len(o.Refused)-20)
			break
		}
		fmt.Fprintf(a.Stderr, "refused %s: %s (%s)\n", r.Target, r.Message, r.Code)
	}
}

func (a *App) uninstallCmd() *cobra.Command {
	var table string
	cmd := &cobra.Command{
		Use:   "uninstall-rules",
		Short: "Delete parry's nftables table (package purge)",
		Long: `Delete parry's nftables table and every block in it. If parryd is running it
removes the table and stops (otherwise it would rebuild it); if not, the table
is removed directly (needs root). The store keeps the blocks: starting parryd
again re-creates the table with them.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			err := a.call(map[string]any{"op": "uninstall_rules"}, nil)
			if err == nil {
				fmt.Fprintln(a.Stdout, "removed the nftables table; parryd is stopping")
				return nil
			}
			if !errors.Is(err, client.ErrNotRunning) {
				return err
			}
			deleted, derr := droptable.Inet(table)
			if derr != nil {
				return &exitError{code: ExitFailed, err: derr}
			}
			if !deleted {
				fmt.Fprintf(a.Stdout, "parryd is not running and this network namespace has no table inet %s: nothing to remove\n", table)
				return nil
			}
			fmt.Fprintf(a.Stdout, "parryd is not running; removed table inet %s\n", table)
			return nil
		},
	}
	cmd.Flags().StringVar(&table, "table", "parry", "table name (used when parryd is not running)")
	return cmd
}

// nonNil makes an empty list print as [] in JSON, not null.
func nonNil[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}

// hintCovered says, for addresses that were not blocked by themselves, which
// blocked CIDR still drops them: "was not blocked" alone sends the admin
// away while the traffic is still dropped.
func (a *App) hintCovered(notFound []string) {
	if len(notFound) == 0 || len(notFound) > 1000 {
		return
	}
	var resp struct {
		Blocks []api.BlockInfo `json:"blocks"`
	}
	if a.call(map[string]any{"op": "list"}, &resp) != nil {
		return
	}
	var cidrs []netip.Prefix
	for _, b := range resp.Blocks {
		if p, err := netip.ParsePrefix(b.Target); err == nil {
			cidrs = append(cidrs, p)
		}
	}
	for _, t := range notFound {
		p, err := api.ParseTarget(t)
		if err != nil {
			continue
		}
		for _, c := range cidrs {
			if c.Bits() < p.Bits() && c.Contains(p.Addr()) {
				fmt.Fprintf(a.Stdout, "  but %s is inside the blocked %s, which still drops it: 'parry unblock %s' to let it through\n", t, c, c)
				break
			}
		}
	}
}

func plural(n int, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return fmt.Sprintf("%d %ss", n, what)
}
