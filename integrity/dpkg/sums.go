package dpkg

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// Listing is one package's record of a file.
type Listing struct {
	Package  string
	MD5      [16]byte
	Conffile bool
}

// Sums returns dpkg's record of every file under root for which keep
// (given the absolute path, root included) is true: keyed by the path the
// file is at, with /usr-merge aliases and diversions applied, and every
// package's listing of it. It reads every info/*.md5sums (the package
// named by the file) and, where the status file exists, the conffiles of
// installed packages. For parryd's package awareness (a changed file
// whose content matches a listing is a package update).
func Sums(root string, keep func(path string) bool) (map[string][]Listing, int, error) {
	root = filepath.Clean(root)
	d := &db{root: root, diverts: map[string]diversion{}, aliases: map[string]string{}}
	pkgs, err := d.readStatus()
	if err != nil && !errors.Is(err, ErrNoDatabase) {
		return nil, 0, err
	}
	d.readAliases()
	if err := d.readDiversions(); err != nil {
		return nil, 0, err
	}
	for _, p := range pkgs {
		fields := strings.Fields(p.status)
		if len(fields) != 3 || !installedStates[fields[2]] || !validName(p.name, false) {
			continue
		}
		full := p.name
		if p.multiArchSame && validName(p.arch, true) {
			full = p.name + ":" + p.arch
		}
		for _, c := range p.conffiles {
			c.pkg = full
			d.entries = append(d.entries, c)
		}
	}
	lists, err := filepath.Glob(filepath.Join(root, "var/lib/dpkg/info/*.md5sums"))
	if err != nil {
		return nil, 0, fmt.Errorf("list md5sums: %w", err)
	}
	kept := func(from int) { // keep only what keep wants, list by list: parryd watches a part of the system
		if keep == nil {
			return
		}
		n := from
		for _, e := range d.entries[from:] {
			if keep(d.under(d.phys(&e))) {
				d.entries[n] = e
				n++
			}
		}
		d.entries = d.entries[:n]
	}
	kept(0)
	for _, f := range lists {
		from := len(d.entries)
		if err := d.readMD5sums(f, strings.TrimSuffix(filepath.Base(f), ".md5sums")); err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, 0, fmt.Errorf("read %s: %w", f, err)
		}
		kept(from)
	}
	out := map[string][]Listing{}
	for _, it := range d.items() {
		p := d.under(it.rel)
		if keep != nil && !keep(p) {
			continue
		}
		ls := make([]Listing, len(it.entries))
		for i, e := range it.entries {
			ls[i] = Listing{Package: e.pkg, MD5: e.md5, Conffile: e.conffile}
		}
		out[p] = ls
	}
	return out, d.malformed, nil
}

// under is the absolute path of p (absolute or relative to the root) on
// this host: the root joined with it, without an allocation when the root
// is / (the daemon's case, once per package file).
func (d *db) under(p string) string {
	if d.root == "/" && strings.HasPrefix(p, "/") {
		return p
	}
	return filepath.Join(d.root, p)
}
