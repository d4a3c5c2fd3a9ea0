package integrity

import (
	"bufio"
	"crypto/md5"
	"encoding/hex"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"golang.org/x/sys/unix"
)

// Dpkg knows the md5 sums dpkg recorded for the files it installed
// (<root>/var/lib/dpkg/info/*.md5sums), for the selected paths only. It
// reloads when the info directory changes.
type Dpkg struct {
	root string
	sel  *Selection

	mu    sync.Mutex
	mtime int64
	sums  map[string]pkgSum
}

type pkgSum struct {
	pkg string
	md5 [16]byte
}

// NewDpkg reads package sums under root lazily, keeping those sel selects.
func NewDpkg(root string, sel *Selection) *Dpkg {
	return &Dpkg{root: root, sel: sel, mtime: -1}
}

func (d *Dpkg) infoDir() string { return filepath.Join(d.root, "var/lib/dpkg/info") }

func (d *Dpkg) load() {
	var st unix.Stat_t
	if err := unix.Stat(d.infoDir(), &st); err != nil {
		d.sums, d.mtime = nil, -1
		return
	}
	mt := st.Mtim.Nano()
	if mt == d.mtime && d.sums != nil {
		return
	}
	d.mtime = mt
	d.sums = map[string]pkgSum{}
	files, _ := filepath.Glob(filepath.Join(d.infoDir(), "*.md5sums"))
	for _, f := range files {
		pkg := strings.TrimSuffix(filepath.Base(f), ".md5sums")
		d.readSums(f, pkg)
	}
}

func (d *Dpkg) readSums(file, pkg string) {
	f, err := os.Open(file)
	if err != nil {
		return
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		sum, rel, ok := strings.Cut(sc.Text(), "  ")
		if !ok || len(sum) != 32 {
			continue
		}
		p := filepath.Join(d.root, "/"+rel)
		if !d.sel.Selected(p) {
			continue
		}
		var ps pkgSum
		if _, err := hex.Decode(ps.md5[:], []byte(sum)); err != nil {
			continue
		}
		ps.pkg = pkg
		d.sums[p] = ps
	}
}

// Explain returns the package whose recorded md5 matches the current
// content of path, or "" when dpkg does not explain it.
func (d *Dpkg) Explain(path string) string {
	if d == nil {
		return ""
	}
	d.mu.Lock()
	d.load()
	ps, ok := d.sums[path]
	d.mu.Unlock()
	if !ok {
		return ""
	}
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK, 0)
	if err != nil {
		return ""
	}
	defer f.Close()
	h := md5.New()
	if _, err := io.Copy(h, f); err != nil {
		return ""
	}
	if [16]byte(h.Sum(nil)) != ps.md5 {
		return ""
	}
	return ps.pkg
}

// Len is the number of selected files dpkg has sums for.
func (d *Dpkg) Len() int {
	if d == nil {
		return 0
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.load()
	return len(d.sums)
}
