package cli

import (
	"errors"
	"fmt"
	"io"
	"runtime"
	"strings"
	"time"

	"github.com/parryhq/parry/integrity/dpkg"
	"github.com/spf13/cobra"
)

func (a *App) integrityVerifyPackagesCmd() *cobra.Command {
	var (
		asJSON  bool
		root    string
		workers int
	)
	cmd := &cobra.Command{
		Use:   "verify-packages [PACKAGE...]",
		Short: "Check every file dpkg installed against dpkg's md5 sums (no baseline, no daemon)",
		Long: `Check every regular file that dpkg installed (all installed packages, or
the PACKAGEs named) against dpkg's own record: the md5 sums in
/var/lib/dpkg/info/*.md5sums and, for conffiles, in /var/lib/dpkg/status.
Diversions and the /usr merge (/bin → /usr/bin) are followed; no other
symlink is. Runs here, without parryd, on all CPUs; run it as root.

Reported: changed (content differs), missing, replaced (a symlink, a
directory ... where the file was), unreadable. A conffile the admin edited
or removed is a low note, not a failure.

Exit status: 0 every package file matches, 1 a package file differs (or
the check failed), 2 usage error. See docs/integrity.md for what the check
proves and what it cannot.`,
		RunE: func(cmd *cobra.Command, args []string) error {
			if workers < 0 || workers > 256 {
				return usageErr("--workers %d: want 0..256", workers)
			}
			res, err := dpkg.Verify(cmd.Context(), dpkg.Options{Root: root, Packages: args, Workers: workers})
			if errors.Is(err, dpkg.ErrUnknownPackage) {
				return usageErr("%v", err)
			}
			if err != nil {
				return &exitError{code: ExitFailed, err: err}
			}
			if asJSON {
				if err := printResult(a.Stdout, res.Clean, res); err != nil {
					return err
				}
			} else {
				printPackageFindings(a.Stdout, res)
			}
			if !res.Clean {
				return &exitError{code: ExitFailed, quiet: true, err: errors.New("package files differ")}
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	cmd.Flags().StringVar(&root, "root", "/", "root of the system to check (its dpkg database and files)")
	cmd.Flags().IntVar(&workers, "workers", 0, fmt.Sprintf("hashing threads (0: one per CPU, here %d)", runtime.NumCPU()))
	return cmd
}

func printPackageFindings(w io.Writer, res *dpkg.Result) {
	counts := map[string]int{}
	for _, f := range res.Findings {
		label := strings.ToUpper(string(f.Kind))
		if f.Severity == dpkg.SeverityLow {
			label = "note"
			counts["note"]++
		} else {
			counts[string(f.Kind)]++
		}
		fmt.Fprintf(w, "%-10s %s (%s)\n", label, oneLine(f.Path), oneLine(strings.Join(f.Packages, ", ")))
		if f.Listed != "" {
			fmt.Fprintf(w, "           listed as %s\n", oneLine(f.Listed))
		}
		switch {
		case f.Conffile && f.Kind == dpkg.Changed:
			fmt.Fprintln(w, "           conffile edited (the admin's to change)")
		case f.Conffile:
			fmt.Fprintf(w, "           conffile %s\n", f.Kind)
		}
		if f.Kind == dpkg.Changed {
			fmt.Fprintf(w, "           md5 %s, dpkg has %s\n", f.Actual, strings.Join(f.Expected, " or "))
		}
		if f.Detail != "" {
			fmt.Fprintf(w, "           %s\n", oneLine(f.Detail))
		}
	}
	var parts []string
	for _, k := range []string{"changed", "missing", "replaced", "unreadable", "note"} {
		if counts[k] > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", counts[k], k))
		}
	}
	summary := "all match"
	if len(parts) > 0 {
		summary = strings.Join(parts, ", ")
	}
	fmt.Fprintf(w, "checked %s (%d conffiles, %.1f MiB) of %s in %s: %s\n", countOf(res.Files, "file"), res.Conffiles,
		float64(res.Bytes)/(1<<20), countOf(res.Packages, "package"), res.Took.Round(time.Millisecond), summary)
	if res.Malformed > 0 {
		fmt.Fprintf(w, "%s in dpkg's lists ignored (too long, unsafe path or bad sum)\n", countOf(res.Malformed, "line"))
	}
}
