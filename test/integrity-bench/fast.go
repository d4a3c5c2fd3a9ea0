package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"

	"github.com/parryhq/parry/integrity"
)

// fastCheck measures the scheduled check between full ones (only files
// whose inode, size, mtime or ctime changed are re-read) on an unchanged
// tree, beside the full check and `aide --check` on the same tree in the
// same run. AIDE's rule is the anchor's (/work/shared/anchors/aide_fim.sh,
// variant s256): p+u+g+ftype+n+i+s+b+l+X+m+c+sha256, one worker, gzip'd
// database.
func fastCheck(n, big, runs int, withAIDE, keep bool) error {
	dir, cleanup, err := workdir(keep)
	if err != nil {
		return err
	}
	defer cleanup()
	tree, state := filepath.Join(dir, "tree"), filepath.Join(dir, "state")
	fmt.Printf("generating %d files (%d of 1-16 MiB) under %s ...\n", n, big, tree)
	total, err := generate(tree, n, big)
	if err != nil {
		return err
	}
	fmt.Printf("tree: %d files, %.2f GiB; %d CPUs; %s\n", n, float64(total)/(1<<30), runtime.NumCPU(), runtime.Version())
	if err := run("sh", "-c", "find "+tree+" -type f -print0 | xargs -0 cat > /dev/null"); err != nil {
		return err
	}
	m, err := monitorFor(tree, state)
	if err != nil {
		return err
	}
	ctx := context.Background()
	if _, err := m.Baseline(ctx); err != nil {
		return err
	}
	clean := func(check func(context.Context) ([]integrity.Finding, error)) func() error {
		return func() error {
			fs, err := check(ctx)
			if err == nil && len(fs) != 0 {
				err = fmt.Errorf("check of an unchanged tree found %d changes", len(fs))
			}
			return err
		}
	}
	var fast, full []measured
	for range runs {
		d, err := timeIt(clean(m.FastCheck))
		if err != nil {
			return err
		}
		fast = append(fast, d)
	}
	for range max(1, runs/5) {
		d, err := timeIt(clean(m.Check))
		if err != nil {
			return err
		}
		full = append(full, d)
	}
	slices.SortFunc(fast, func(a, b measured) int { return int(a.wall - b.wall) })
	p99 := fast[min(len(fast)-1, len(fast)*99/100)]
	fmt.Printf("\n%-58s %10s %10s\n", "measurement (warm page cache, nothing changed)", "wall s", "cpu s")
	row := func(name string, d measured) {
		fmt.Printf("%-58s %10.3f %10.3f\n", name, d.wall.Seconds(), d.cpu.Seconds())
	}
	row(fmt.Sprintf("parry fast check (median of %d)", len(fast)), median(fast))
	row(fmt.Sprintf("parry fast check (p99 of %d)", len(fast)), p99)
	row(fmt.Sprintf("parry full check, sha256 (median of %d)", len(full)), median(full))
	if withAIDE {
		conf, db := filepath.Join(dir, "aide.conf"), filepath.Join(dir, "aide.db.gz")
		cfg := fmt.Sprintf("database_in=file:%s\ndatabase_out=file:%s.new\ngzip_dbout=yes\nlog_level=warning\nreport_url=file:%s\nnum_workers=1\nRule = p+u+g+ftype+n+i+s+b+l+X+m+c+sha256\n%s Rule\n",
			db, db, filepath.Join(dir, "aide.report"), tree)
		if err := os.WriteFile(conf, []byte(cfg), 0o600); err != nil {
			return err
		}
		if err := run("aide", "--init", "-c", conf); err != nil {
			return err
		}
		if err := os.Rename(db+".new", db); err != nil {
			return err
		}
		d, err := timeIt(func() error { return run("aide", "--check", "-c", conf) })
		if err != nil {
			return err
		}
		row("aide --check, sha256, num_workers=1 (the anchor's rule)", d)
	}
	fmt.Printf("(load average at the end: %s)\n", loadavg())
	return nil
}
