package dpkg

import (
	"context"
	"crypto/md5"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// Kind is what is wrong with a package file.
type Kind string

// Kinds of findings.
const (
	Changed    Kind = "changed"    // content differs from dpkg's md5
	Missing    Kind = "missing"    // not there
	Replaced   Kind = "replaced"   // not a regular file any more (a symlink, a directory...), or reached through a symlink
	Unreadable Kind = "unreadable" // could not be read: not verified
)

// Severities. A conffile's deviation is a low note (conffiles are the
// admin's to edit); any other deviation is high; an unreadable file medium.
const (
	SeverityLow    = "low"
	SeverityMedium = "medium"
	SeverityHigh   = "high"
)

// Finding is one package file that does not match dpkg's record.
type Finding struct {
	Kind     Kind     `json:"kind"`
	Severity string   `json:"severity"`
	Path     string   `json:"path"`               // the file checked (after /usr-merge aliases and diversions)
	Listed   string   `json:"listed,omitempty"`   // the path dpkg lists, when it differs from Path
	Packages []string `json:"packages"`           // every package listing the file
	Conffile bool     `json:"conffile,omitempty"` // every listing package has it as a conffile
	Expected []string `json:"expected_md5"`       // dpkg's sums (several when packages disagree)
	Actual   string   `json:"actual_md5,omitempty"`
	Detail   string   `json:"detail,omitempty"` // e.g. "now a symlink to /tmp/x", an error
}

// Result is one verification.
type Result struct {
	Root      string        `json:"root"`
	Packages  int           `json:"packages"`
	Files     int           `json:"files"`     // distinct files checked
	Conffiles int           `json:"conffiles"` // of which conffiles
	Bytes     int64         `json:"bytes"`     // content read
	Malformed int           `json:"malformed"` // lines in dpkg's lists ignored (too long, unsafe path, bad sum)
	Workers   int           `json:"workers"`
	Took      time.Duration `json:"took_ns"`
	Clean     bool          `json:"clean"` // no finding above low
	Findings  []Finding     `json:"findings"`
}

// Options for Verify.
type Options struct {
	Root     string   // the system's root; "" is "/"
	Packages []string // only these packages ("name" or "name:arch"); none: all installed
	Workers  int      // hashing threads; 0: one per CPU
}

const readBufSize = 1 << 20

// item is one physical file and every listing of it.
type item struct {
	rel      string // canonical, relative to the root: what is opened
	listed   string // first listed path, when it differs from rel
	entries  []entry
	conffile bool // all entries are conffiles
}

// Verify checks every file that the selected installed packages list.
func Verify(ctx context.Context, opt Options) (*Result, error) {
	start := time.Now()
	root := opt.Root
	if root == "" {
		root = "/"
	}
	root = filepath.Clean(root)
	d, err := load(root, opt.Packages)
	if err != nil {
		return nil, err
	}
	items := d.items()
	workers := opt.Workers
	if workers <= 0 {
		workers = runtime.NumCPU()
	}
	workers = min(workers, max(1, len(items)))
	rootFD, err := unix.Open(root, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC|unix.O_PATH, 0)
	if err != nil {
		return nil, fmt.Errorf("open root %s: %w", root, err)
	}
	defer unix.Close(rootFD)

	found := make([]*Finding, len(items))
	var next atomic.Int64
	var bytes atomic.Int64
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			w := &worker{rootFD: rootFD, h: md5.New(), buf: make([]byte, readBufSize)}
			const batch = 32
			for ctx.Err() == nil {
				lo := int(next.Add(batch)) - batch
				if lo >= len(items) {
					break
				}
				for i := lo; i < min(lo+batch, len(items)); i++ {
					found[i] = w.check(root, &items[i])
				}
			}
			bytes.Add(w.bytes)
		})
	}
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("verify packages: %w", err)
	}
	res := &Result{Root: root, Packages: len(d.packages), Files: len(items), Malformed: d.malformed,
		Workers: workers, Bytes: bytes.Load(), Clean: true, Findings: []Finding{}}
	for i := range items {
		if items[i].conffile {
			res.Conffiles++
		}
		if f := found[i]; f != nil {
			res.Findings = append(res.Findings, *f)
			if f.Severity != SeverityLow {
				res.Clean = false
			}
		}
	}
	res.Took = time.Since(start)
	return res, nil
}

// items groups the entries by the file they name: a path listed by two
// packages, or as bin/ls by one and usr/bin/ls by another where /bin is
// an alias of /usr/bin, is one file, checked once. A diverted path is
// checked where the diversion puts it, except for the diverting package's
// own file.
func (d *db) items() []item {
	byRel := map[string]int{}
	var items []item
	for _, e := range d.entries {
		phys := d.phys(&e)
		rel := phys[1:]
		i, ok := byRel[rel]
		if !ok {
			i = len(items)
			byRel[rel] = i
			items = append(items, item{rel: rel, conffile: true})
			if e.listed != phys {
				items[i].listed = e.listed
			}
		}
		it := &items[i]
		// A package listing a path as a conffile and in its md5sums: the
		// conffile listing wins (the admin may edit it).
		if j := slices.IndexFunc(it.entries, func(x entry) bool { return x.pkg == e.pkg }); j >= 0 {
			if e.conffile && !it.entries[j].conffile {
				it.entries[j] = e
			}
		} else {
			it.entries = append(it.entries, e)
		}
	}
	for i := range items {
		for _, e := range items[i].entries {
			items[i].conffile = items[i].conffile && e.conffile
		}
	}
	// Path order: files of one directory together, as they lie on disk.
	sort.Slice(items, func(a, b int) bool { return items[a].rel < items[b].rel })
	return items
}

// phys is the absolute path (below the root) where e's file is: its
// listed path through the /usr-merge aliases and the diversions.
func (d *db) phys(e *entry) string {
	canon := "/" + d.canonical(e.listed[1:])
	if dv, ok := d.diverts[canon]; ok && !dv.owns(e.pkg) {
		return dv.to
	}
	return canon
}

type worker struct {
	rootFD int
	h      hash.Hash
	buf    []byte
	bytes  int64
}

// check hashes one file and returns its finding, or nil when it matches
// one of the sums its packages list.
func (w *worker) check(root string, it *item) *Finding {
	sum, detail, kind := w.hash(it.rel)
	if kind == "" {
		for _, e := range it.entries {
			if e.md5 == sum {
				return nil
			}
		}
		kind = Changed
	}
	f := &Finding{Kind: kind, Path: "/" + it.rel, Listed: it.listed, Conffile: it.conffile, Detail: detail}
	if kind == Changed {
		f.Actual = hex.EncodeToString(sum[:])
	}
	for _, e := range it.entries {
		if !slices.Contains(f.Packages, e.pkg) {
			f.Packages = append(f.Packages, e.pkg)
		}
		if s := hex.EncodeToString(e.md5[:]); !slices.Contains(f.Expected, s) {
			f.Expected = append(f.Expected, s)
		}
	}
	sort.Strings(f.Packages)
	switch {
	case it.conffile:
		f.Severity = SeverityLow
	case kind == Unreadable:
		f.Severity = SeverityMedium
	default:
		f.Severity = SeverityHigh
	}
	if root != "/" {
		f.Path = filepath.Join(root, f.Path)
	}
	return f
}

// openFlags: never follow a symlink, never block on a FIFO, never become
// the controlling terminal, leave the access time alone.
const openFlags = unix.O_RDONLY | unix.O_NOFOLLOW | unix.O_NONBLOCK | unix.O_CLOEXEC | unix.O_NOCTTY

var noOpenat2 atomic.Bool

// open opens rel below the root without following any symlink, in the
// path or at its end (openat2 RESOLVE_NO_SYMLINKS|RESOLVE_BENEATH), with
// O_NOATIME where the kernel allows it (the file's owner or
// CAP_FOWNER). On kernels without openat2 (before 5.6) only the last
// component is protected.
func (w *worker) open(rel string) (int, error) {
	flags := uint64(openFlags | unix.O_NOATIME)
	for retry := 0; ; retry++ {
		var fd int
		var err error
		if !noOpenat2.Load() {
			fd, err = unix.Openat2(w.rootFD, rel, &unix.OpenHow{Flags: flags,
				Resolve: unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_BENEATH | unix.RESOLVE_NO_MAGICLINKS})
			if errors.Is(err, unix.ENOSYS) {
				noOpenat2.Store(true)
				continue
			}
		} else {
			fd, err = unix.Openat(w.rootFD, rel, int(flags), 0)
		}
		if (errors.Is(err, unix.EINTR) || errors.Is(err, unix.EAGAIN)) && retry < 16 {
			continue // openat2 asks to retry when a rename raced it; not forever
		}
		if errors.Is(err, unix.EPERM) && flags&unix.O_NOATIME != 0 {
			flags &^= unix.O_NOATIME
			continue
		}
		return fd, err
	}
}

// hash returns the md5 of rel's content, or the kind of problem and a
// detail.
func (w *worker) hash(rel string) (sum [16]byte, detail string, kind Kind) {
	fd, err := w.open(rel)
	switch {
	case errors.Is(err, unix.ENOENT):
		return sum, "", Missing
	case errors.Is(err, unix.ELOOP), errors.Is(err, unix.ENOTDIR), errors.Is(err, unix.EXDEV):
		return sum, w.symlinkDetail(rel, err), Replaced
	case err != nil:
		return sum, fmt.Sprintf("open: %v", err), Unreadable
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return sum, fmt.Sprintf("fstat: %v", err), Unreadable
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return sum, "now a " + typeName(st.Mode), Replaced
	}
	w.h.Reset()
	// Read in 1 MiB reads up to the size fstat gave: a file growing while
	// it is read is hashed as it was.
	for total := int64(0); total < st.Size; {
		buf := w.buf
		if rem := st.Size - total; rem < int64(len(buf)) {
			buf = buf[:rem]
		}
		n, err := unix.Read(fd, buf)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return sum, fmt.Sprintf("read: %v", err), Unreadable
		}
		if n == 0 {
			break
		}
		w.h.Write(buf[:n])
		total += int64(n)
		w.bytes += int64(n)
	}
	w.h.Sum(sum[:0])
	return sum, "", ""
}

// symlinkDetail says which component of rel is in the way: the first
// symlink (with its target, never followed) or non-directory.
func (w *worker) symlinkDetail(rel string, err error) string {
	parts := strings.Split(rel, "/")
	for i := range parts {
		p := strings.Join(parts[:i+1], "/")
		var st unix.Stat_t
		// Each prefix was reached without symlinks up to here.
		if unix.Fstatat(w.rootFD, p, &st, unix.AT_SYMLINK_NOFOLLOW) != nil {
			break
		}
		last := i == len(parts)-1
		switch {
		case st.Mode&unix.S_IFMT == unix.S_IFLNK:
			buf := make([]byte, 4096)
			n, _ := unix.Readlinkat(w.rootFD, p, buf)
			if last {
				return "now a symlink to " + string(buf[:max(n, 0)])
			}
			return fmt.Sprintf("/%s is a symlink to %s", p, buf[:max(n, 0)])
		case !last && st.Mode&unix.S_IFMT != unix.S_IFDIR:
			return fmt.Sprintf("/%s is a %s, not a directory", p, typeName(st.Mode))
		}
	}
	return fmt.Sprintf("open: %v", err)
}

func typeName(mode uint32) string {
	switch mode & unix.S_IFMT {
	case unix.S_IFREG:
		return "file"
	case unix.S_IFDIR:
		return "directory"
	case unix.S_IFLNK:
		return "symlink"
	case unix.S_IFIFO:
		return "fifo"
	case unix.S_IFSOCK:
		return "socket"
	case unix.S_IFCHR:
		return "character device"
	case unix.S_IFBLK:
		return "block device"
	}
	return "file of unknown type"
}
