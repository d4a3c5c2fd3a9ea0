package integrity

import (
	"crypto/md5"
	"io"
	"os"
	"path/filepath"
	"sync"

	"github.com/parryhq/parry/integrity/dpkg"
	"golang.org/x/sys/unix"
)

// Dpkg knows the md5 sums dpkg recorded for the files it installed
// (<root>/var/lib/dpkg/info/*.md5sums, and the conffiles' in
// <root>/var/lib/dpkg/status), for the selected paths only, at the paths
// the files are at (/usr-merge aliases and diversions applied, see
// integrity/dpkg). It reloads when the info directory changes.
type Dpkg struct {
	root string
	sel  *Selection

	mu    sync.Mutex
	mtime int64
	sums  map[string][]dpkg.Listing
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
	sums, _, err := dpkg.Sums(d.root, d.sel.Selected)
	if err != nil {
		sums = map[string][]dpkg.Listing{}
	}
	d.sums = sums
}

// Explain returns the package whose recorded md5 matches the current
// content of path, or "" when dpkg does not explain it.
func (d *Dpkg) Explain(path string) string {
	if d == nil {
		return ""
	}
	d.mu.Lock()
	d.load()
	ls, ok := d.sums[path]
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
	sum := [16]byte(h.Sum(nil))
	for _, l := range ls {
		if l.MD5 == sum {
			return l.Package
		}
	}
	return ""
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
