// Package dpkg verifies the files dpkg installed against dpkg's own
// records — the md5 sums in <root>/var/lib/dpkg/info/*.md5sums and the
// conffile sums in <root>/var/lib/dpkg/status — without a baseline, like
// debsums. It imports the standard library and x/sys only, so that the
// parry CLI can run it without parryd.
//
// dpkg's lists are input from packages, and a package can be malicious:
// every line is bounded, every path is checked to stay below the root, and
// no symlink is followed (a file replaced by a symlink is reported as
// replaced, not read through).
package dpkg

import (
	"bufio"
	"bytes"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
)

// Limits on dpkg's files.
const (
	MaxPathLine   = 4096 + 64 // an md5sums or diversions line: PATH_MAX and a sum
	MaxStatusLine = 64 << 10  // a line of the status file (descriptions are long)
	MaxListSize   = 256 << 20 // one md5sums, status or diversions file
)

var maxListSize = MaxListSize // tests lower it

var (
	// ErrNoDatabase is returned when the root has no dpkg status file.
	ErrNoDatabase = errors.New("no dpkg database")
	// ErrUnknownPackage is returned when a requested package is not installed.
	ErrUnknownPackage = errors.New("package not installed")
)

// entry is one file dpkg lists for one package.
type entry struct {
	pkg      string
	listed   string // the path as listed, made absolute and clean ("/bin/ls")
	md5      [16]byte
	conffile bool
}

// db is what Verify learns from dpkg's database.
type db struct {
	root      string
	packages  []string
	entries   []entry
	diverts   map[string]diversion // by canonical original path
	aliases   map[string]string    // top-level directory symlinks: "bin" → "usr/bin"
	malformed int                  // lines of dpkg's lists that were ignored
}

type diversion struct {
	to string // canonical
	by string // diverting package; ":" for a local diversion
}

// pkgInfo is one stanza of the status file.
type pkgInfo struct {
	name, arch, status string
	multiArchSame      bool
	conffiles          []entry
}

// installedStates are the package states in which its files are on disk.
var installedStates = map[string]bool{
	"installed": true, "unpacked": true, "half-configured": true,
	"triggers-awaited": true, "triggers-pending": true,
}

// readLines calls fn for each line of r (without the newline). Lines
// longer than max are skipped and counted; past MaxListSize reading stops
// and the rest counts as one skipped line (a line cut there is not used).
func readLines(r io.Reader, max int, fn func(line []byte)) (skipped int, err error) {
	br := bufio.NewReaderSize(r, max+1)
	total := 0
	for {
		line, err := br.ReadSlice('\n')
		if total += len(line); total > maxListSize {
			return skipped + 1, nil
		}
		if errors.Is(err, bufio.ErrBufferFull) {
			skipped++
			for errors.Is(err, bufio.ErrBufferFull) { // the rest of the long line
				_, err = br.ReadSlice('\n')
			}
			if err == io.EOF {
				return skipped, nil
			}
			if err != nil {
				return skipped, err
			}
			continue
		}
		if len(line) > 0 {
			fn(bytes.TrimSuffix(line, []byte{'\n'}))
		}
		if err == io.EOF {
			return skipped, nil
		}
		if err != nil {
			return skipped, err
		}
	}
}

func readFile(path string, max int, fn func([]byte)) (int, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	return readLines(f, max, fn)
}

// cleanRel makes a path from dpkg's lists ("usr/bin/ls", "./usr/bin/ls",
// "/usr/bin/ls") relative to the root ("usr/bin/ls"), or reports it unsafe:
// empty, with "." or ".." or empty components, a NUL, or too long. Nothing
// unsafe is ever opened.
func cleanRel(p string) (string, bool) {
	p = strings.TrimPrefix(p, "./")
	p = strings.TrimPrefix(p, "/")
	if p == "" || len(p) > 4096 || strings.IndexByte(p, 0) >= 0 {
		return "", false
	}
	for rest := p; ; { // each component, without a slice of them (one call per package file)
		c, more, found := strings.Cut(rest, "/")
		if c == "" || c == "." || c == ".." {
			return "", false
		}
		if !found {
			return p, true
		}
		rest = more
	}
}

// validName: package names are [a-z0-9][a-z0-9+.-]*, architectures
// [a-z0-9-]+ (Debian Policy 5.6.1); anything else never reaches a file name.
func validName(s string, arch bool) bool {
	if s == "" || len(s) > 255 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9':
		case c == '-':
		case (c == '+' || c == '.') && !arch && i > 0:
		case c >= 'A' && c <= 'Z' && !arch: // old packages have capitals
		default:
			return false
		}
	}
	return true
}

// readStatus parses <root>/var/lib/dpkg/status.
func (d *db) readStatus() ([]pkgInfo, error) {
	var pkgs []pkgInfo
	var cur pkgInfo
	inConf := false
	flush := func() {
		if cur.name != "" {
			pkgs = append(pkgs, cur)
		}
		cur, inConf = pkgInfo{}, false
	}
	skipped, err := readFile(filepath.Join(d.root, "var/lib/dpkg/status"), MaxStatusLine, func(line []byte) {
		if len(line) == 0 {
			flush()
			return
		}
		if line[0] == ' ' || line[0] == '\t' {
			if inConf {
				e, ok, skip := parseConffile(string(line))
				switch {
				case ok:
					cur.conffiles = append(cur.conffiles, e)
				case !skip:
					d.malformed++
				}
			}
			return
		}
		inConf = false
		k, v, ok := bytes.Cut(line, []byte{':'})
		if !ok {
			return
		}
		v = bytes.TrimSpace(v)
		switch string(k) { // no string for the fields not used (most lines of the file)
		case "Package":
			cur.name = string(v)
		case "Architecture":
			cur.arch = string(v)
		case "Status":
			cur.status = string(v)
		case "Multi-Arch":
			cur.multiArchSame = string(v) == "same"
		case "Conffiles":
			inConf = true
		}
	})
	d.malformed += skipped
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%w at %s", ErrNoDatabase, d.root)
	}
	if err != nil {
		return nil, fmt.Errorf("read dpkg status: %w", err)
	}
	flush()
	return pkgs, nil
}

// parseConffile parses " /etc/foo.conf <md5> [obsolete] [remove-on-upgrade]".
// Obsolete conffiles (no longer shipped) and "newconffile" placeholders
// (unpacked, not configured yet) are skipped, not checked. The path may
// hold spaces: the sum is the last field before the flags.
func parseConffile(line string) (e entry, ok, skip bool) {
	f := strings.TrimLeft(line, " \t")
	for {
		if g, cut := strings.CutSuffix(f, " remove-on-upgrade"); cut {
			f = g
			continue
		}
		if g, cut := strings.CutSuffix(f, " obsolete"); cut {
			f, skip = g, true
			continue
		}
		break
	}
	i := strings.LastIndexByte(f, ' ')
	if i < 0 {
		return entry{}, false, false
	}
	path, sum := f[:i], f[i+1:]
	if sum == "newconffile" {
		return entry{}, false, true
	}
	if skip {
		return entry{}, false, true
	}
	if len(sum) != 32 {
		return entry{}, false, false
	}
	if _, err := hex.Decode(e.md5[:], []byte(sum)); err != nil {
		return entry{}, false, false
	}
	rel, safe := cleanRel(path)
	if !safe || !strings.HasPrefix(path, "/") {
		return entry{}, false, false
	}
	e.listed, e.conffile = "/"+rel, true
	return e, true, false
}

// readMD5sums adds the entries of one package's md5sums file.
func (d *db) readMD5sums(file, pkg string) error {
	skipped, err := readFile(file, MaxPathLine, func(line []byte) {
		// "<32 hex>  <path>"; dpkg writes two spaces (md5sum's text mode).
		if len(line) < 35 || line[32] != ' ' {
			d.malformed++
			return
		}
		var e entry
		if _, err := hex.Decode(e.md5[:], line[:32]); err != nil {
			d.malformed++
			return
		}
		p := string(line[33:])
		if p[0] == ' ' || p[0] == '*' {
			p = p[1:]
		}
		rel, ok := cleanRel(p)
		if !ok {
			d.malformed++
			return
		}
		e.pkg, e.listed = pkg, "/"+rel
		d.entries = append(d.entries, e)
	})
	d.malformed += skipped
	return err
}

// readDiversions parses <root>/var/lib/dpkg/diversions: triples of lines
// (original path, diverted-to path, diverting package or ":" for local).
func (d *db) readDiversions() error {
	var lines []string
	skipped, err := readFile(filepath.Join(d.root, "var/lib/dpkg/diversions"), MaxPathLine, func(l []byte) {
		lines = append(lines, string(l))
	})
	d.malformed += skipped
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read dpkg diversions: %w", err)
	}
	if skipped > 0 || len(lines)%3 != 0 {
		d.malformed++
		return nil // out of step: better no diversions than wrong ones
	}
	for i := 0; i+2 < len(lines); i += 3 {
		from, ok1 := cleanRel(lines[i])
		to, ok2 := cleanRel(lines[i+1])
		by := lines[i+2]
		if !ok1 || !ok2 || (by != ":" && !validName(by, false)) {
			d.malformed++
			continue
		}
		d.diverts["/"+d.canonical(from)] = diversion{to: "/" + d.canonical(to), by: by}
	}
	return nil
}

// readAliases finds the /usr-merge symlinks at the top of the root: a
// top-level entry that is a symlink to usr/NAME (or /usr/NAME), NAME
// being the same name, and usr/NAME a directory. Only these are resolved;
// no other symlink is ever followed.
func (d *db) readAliases() {
	ents, err := os.ReadDir(d.root)
	if err != nil {
		return
	}
	for _, de := range ents {
		if de.Type()&os.ModeSymlink == 0 {
			continue
		}
		name := de.Name()
		t, err := os.Readlink(filepath.Join(d.root, name))
		if err != nil || (t != "usr/"+name && t != "/usr/"+name) {
			continue
		}
		if fi, err := os.Lstat(filepath.Join(d.root, "usr", name)); err == nil && fi.IsDir() {
			d.aliases[name] = "usr/" + name
		}
	}
}

// canonical maps a clean relative path through the /usr-merge aliases
// ("bin/ls" → "usr/bin/ls" where /bin → usr/bin).
func (d *db) canonical(rel string) string {
	first, rest, _ := strings.Cut(rel, "/")
	if to, ok := d.aliases[first]; ok {
		if rest == "" {
			return to
		}
		return to + "/" + rest
	}
	return rel
}

// load reads the database: the installed packages (all, or only those in
// want), their md5sums and conffiles, the diversions and the aliases.
func load(root string, want []string) (*db, error) {
	d := &db{root: root, diverts: map[string]diversion{}, aliases: map[string]string{}}
	pkgs, err := d.readStatus()
	if err != nil {
		return nil, err
	}
	d.readAliases()
	if err := d.readDiversions(); err != nil {
		return nil, err
	}
	var only map[string]bool
	if len(want) > 0 {
		only = map[string]bool{}
		for _, w := range want {
			only[w] = true
		}
	}
	found := map[string]bool{}
	info := filepath.Join(root, "var/lib/dpkg/info")
	for _, p := range pkgs {
		fields := strings.Fields(p.status)
		if len(fields) != 3 || !installedStates[fields[2]] {
			continue
		}
		if !validName(p.name, false) || (p.arch != "" && !validName(p.arch, true)) {
			d.malformed++
			continue
		}
		// Multi-Arch: same packages are named name:arch (several
		// architectures may be installed), and so are their lists.
		full := p.name
		if p.multiArchSame && p.arch != "" {
			full = p.name + ":" + p.arch
		}
		if only != nil && !only[p.name] && !only[full] {
			continue
		}
		found[p.name], found[full] = true, true
		d.packages = append(d.packages, full)
		file := filepath.Join(info, full+".md5sums")
		if _, err := os.Lstat(file); err != nil {
			file = filepath.Join(info, p.name+".md5sums")
		}
		if err := d.readMD5sums(file, full); err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("read md5sums of %s: %w", full, err)
		}
		for _, c := range p.conffiles {
			c.pkg = full
			d.entries = append(d.entries, c)
		}
	}
	for _, w := range want {
		if !found[w] {
			return nil, fmt.Errorf("%s: %w", w, ErrUnknownPackage)
		}
	}
	return d, nil
}

// owns: the diversion is pkg's own (its file stays in place). dpkg names
// the diverting package without its architecture.
func (dv diversion) owns(pkg string) bool {
	name, _, _ := strings.Cut(pkg, ":")
	return dv.by == pkg || dv.by == name
}
