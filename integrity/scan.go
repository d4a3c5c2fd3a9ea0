package integrity

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"os"
	"runtime"
	"sync"

	"github.com/zeebo/blake3"
	"golang.org/x/sys/unix"
	"golang.org/x/time/rate"
)

const readBufSize = 1 << 20 // one large read per MiB; most files take one read

// Scanner records the attributes and content hashes of the selection, in
// parallel. It never follows symlinks: a symlink is recorded as such (with
// its target) and a directory reached twice (bind mounts) is entered once.
type Scanner struct {
	sel     *Selection
	algo    string
	workers int
	nice    int
	limiter *rate.Limiter // nil: unlimited
	chunk   int
	maxHash int64 // files larger are not hashed; 0: no limit
}

// NewScanner builds a scanner for cfg (defaults applied, validated).
func NewScanner(cfg Config) (*Scanner, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	s := &Scanner{sel: NewSelection(cfg), algo: cfg.Hash, workers: cfg.Workers, nice: cfg.Nice, chunk: readBufSize}
	s.maxHash, _ = ParseByteSize(cfg.MaxHashSize)
	bps, _ := ParseByteRate(cfg.IORate)
	if bps > 0 {
		burst := max(bps, 64<<10)
		s.chunk = int(min(int64(readBufSize), burst))
		s.limiter = rate.NewLimiter(rate.Limit(bps), int(min(burst, 1<<30)))
	}
	return s, nil
}

// Selection returns the scanner's selection.
func (s *Scanner) Selection() *Selection { return s.sel }

// MaxHashSize is the largest file hashed (0: no limit).
func (s *Scanner) MaxHashSize() int64 { return s.maxHash }

// Algo is the content hash algorithm in use.
func (s *Scanner) Algo() string { return s.algo }

func (s *Scanner) newHash() hash.Hash {
	if s.algo == HashBLAKE3 {
		return blake3.New()
	}
	return sha256.New()
}

// worker holds per-goroutine scratch space.
type worker struct {
	s    *Scanner
	h    hash.Hash
	buf  []byte
	xbuf []byte
}

func (s *Scanner) newWorker() *worker {
	return &worker{s: s, h: s.newHash(), xbuf: make([]byte, 1024)} // buf on the first read: a fast check may read nothing
}

// Stat records one path now; a path that does not exist gives the zero
// Entry. Errors other than absence are recorded in Entry.Err.
func (s *Scanner) Stat(ctx context.Context, path string) Entry {
	return s.newWorker().entry(ctx, path)
}

func (w *worker) entry(ctx context.Context, path string) Entry {
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENOTDIR) {
			return Entry{}
		}
		return Entry{Type: TypeNone, Err: fmt.Sprintf("lstat: %v", err)}
	}
	e := entryFromStat(&st)
	var err error
	switch e.Type {
	case TypeFile:
		w.hashFile(ctx, path, &e)
		return e
	case TypeSymlink:
		if e.Target, err = os.Readlink(path); err != nil {
			e.Err = fmt.Sprintf("readlink: %v", err)
		}
	case TypeDir:
		if e.Flags, err = dirFlags(path); err != nil {
			e.Err = fmt.Sprintf("flags: %v", err)
		}
	}
	if e.Xattrs, err = pathXattrs(path, &w.xbuf); err != nil && e.Err == "" {
		e.Err = fmt.Sprintf("xattrs: %v", err)
	}
	return e
}

// sameAs fills e from st and path's previous state when the type, inode,
// size, mtime and ctime are unchanged and the previous state is complete
// (no error; a regular file hashed unless it is over max_hash_size).
func (w *worker) sameAs(path string, st *unix.Stat_t, prev Previous, e *Entry) bool {
	p, ok := prev(path)
	if !ok || p.Err != "" || p.Type != typeOf(st.Mode) || p.Inode != st.Ino || p.Size != st.Size ||
		p.Mtime != st.Mtim.Nano() || p.Ctime != st.Ctim.Nano() {
		return false
	}
	if p.Type == TypeFile && p.Hash == ([32]byte{}) && (w.s.maxHash == 0 || p.Size <= w.s.maxHash) {
		return false // not hashed then (max_hash_size was lower): hash it now
	}
	*e = entryFromStat(st)
	e.Hash, e.Xattrs, e.Flags, e.Target = p.Hash, p.Xattrs, p.Flags, p.Target
	return true
}

// regularEntry records a path the directory listing says is a regular
// file, without a separate lstat: open (never following a symlink), fstat,
// hash. It returns false when the path turns out to be something else or
// cannot be opened, and the caller falls back to entry.
func (w *worker) regularEntry(ctx context.Context, path string, e *Entry) bool {
	fd, err := openNoFollow(path)
	if err != nil {
		return false
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if unix.Fstat(fd, &st) != nil || typeOf(st.Mode) != TypeFile {
		return false
	}
	*e = entryFromStat(&st)
	w.readAndHash(ctx, fd, e)
	return true
}

func openNoFollow(path string) (int, error) {
	const flags = unix.O_RDONLY | unix.O_NOFOLLOW | unix.O_NONBLOCK | unix.O_CLOEXEC | unix.O_NOCTTY
	fd, err := unix.Open(path, flags|unix.O_NOATIME, 0)
	if errors.Is(err, unix.EPERM) {
		fd, err = unix.Open(path, flags, 0)
	}
	return fd, err
}

// hashFile opens path without following symlinks (O_NOATIME where the
// kernel allows it), re-checks it is the file lstat saw, reads its xattrs
// and hashes its content in large reads.
func (w *worker) hashFile(ctx context.Context, path string, e *Entry) {
	fd, err := openNoFollow(path)
	if err != nil {
		e.Err = fmt.Sprintf("open: %v", err)
		return
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		e.Err = fmt.Sprintf("fstat: %v", err)
		return
	}
	*e = entryFromStat(&st) // the file we actually read
	if e.Type != TypeFile {
		return
	}
	w.readAndHash(ctx, fd, e)
}

// readAndHash reads the xattrs and content of the open regular file fd.
func (w *worker) readAndHash(ctx context.Context, fd int, e *Entry) {
	var err error
	if e.Xattrs, err = fdXattrs(fd, &w.xbuf); err != nil {
		e.Err = fmt.Sprintf("xattrs: %v", err)
	}
	if e.Flags, err = fdFlags(fd); err != nil && e.Err == "" {
		e.Err = fmt.Sprintf("flags: %v", err)
	}
	if w.s.maxHash > 0 && e.Size > w.s.maxHash {
		return // metadata only: reading a huge (or sparse) file would burn the CPU
	}
	w.h.Reset()
	// Read until EOF, or stop once the size fstat gave has been read (one
	// read for most files instead of a data read and an EOF read). A file
	// growing meanwhile is hashed as it was at fstat; the next check sees it.
	for total := int64(0); e.Size == 0 || total < e.Size; {
		if w.buf == nil {
			w.buf = make([]byte, w.s.chunk)
		}
		buf := w.buf
		if rem := e.Size - total; e.Size > 0 && rem < int64(len(buf)) {
			buf = buf[:rem]
		}
		n, err := unix.Read(fd, buf)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			e.Err = fmt.Sprintf("read: %v", err)
			return
		}
		if n == 0 {
			break
		}
		w.h.Write(buf[:n])
		total += int64(n)
		if w.s.limiter != nil { // n <= chunk <= burst
			if err := w.s.limiter.WaitN(ctx, n); err != nil {
				e.Err = fmt.Sprintf("read: %v", err)
				return
			}
		}
	}
	w.h.Sum(e.Hash[:0])
}

// Result is one scanned path.
type Result struct {
	Path  string
	Entry Entry
}

// Scan records the whole selection. Unreadable files are recorded with
// Entry.Err set; only a cancelled context is an error.
func (s *Scanner) Scan(ctx context.Context) (map[string]Entry, error) {
	return s.scan(ctx, s.sel.Roots(), nil)
}

// ScanTree records root and everything selected below it; onDir is called
// (from the walking goroutine) for every directory entered.
func (s *Scanner) ScanTree(ctx context.Context, root string, onDir func(string)) (map[string]Entry, error) {
	return s.scan(ctx, []string{root}, onDir)
}

func (s *Scanner) scan(ctx context.Context, roots []string, onDir func(string)) (map[string]Entry, error) {
	out := make(map[string]Entry, 1024)
	err := s.scanEach(ctx, roots, onDir, nil, func(r Result) { out[r.Path] = r.Entry })
	if err != nil {
		return nil, err
	}
	return out, nil
}

// Previous gives the last recorded state of a path (the baseline's, or the
// last one seen), for a fast scan; ok false when none. It is called from
// several goroutines at once and must not change.
type Previous func(path string) (e Entry, ok bool)

// scanEach walks roots and calls each for every result, from one goroutine
// while the caller waits (so each may use the caller's locked state). A
// path may come twice (a directory that could not be read completely); the
// later result wins.
//
// With prev (a fast scan), a path whose type, inode, size, mtime and ctime
// are those of its previous state takes its content hash, xattrs, flags
// and symlink target from that state: it costs one lstat instead of an
// open, the xattr and flag reads and reading the content. Writing a file,
// its xattrs or flags, or re-linking it changes its ctime, which no system
// call can set back (see docs/integrity.md, "Fast scheduled checks").
func (s *Scanner) scanEach(ctx context.Context, roots []string, onDir func(string), prev Previous, each func(Result)) error {
	jobs := make(chan []job, 4*s.workers)
	results := make(chan []Result, 4*s.workers)
	free := make(chan []Result, 8*s.workers)
	var collect sync.WaitGroup
	collect.Add(1)
	go func() {
		defer collect.Done()
		for batch := range results {
			for _, r := range batch {
				if r.Entry.Type == TypeNone && r.Entry.Err == "" {
					continue // gone since the directory was read
				}
				each(r)
			}
			if cap(batch) >= 64 { // recycle: a full scan makes no garbage per file here
				clear(batch)
				select {
				case free <- batch[:0]:
				default:
				}
			}
		}
	}()
	var wg sync.WaitGroup
	for range s.workers {
		wg.Go(func() {
			if s.nice > 0 {
				// The thread keeps its niceness and exits with the goroutine.
				runtime.LockOSThread()
				_ = unix.Setpriority(unix.PRIO_PROCESS, unix.Gettid(), s.nice)
			}
			w := s.newWorker()
			for batch := range jobs {
				var res []Result
				select {
				case res = <-free:
				default:
					res = make([]Result, 0, 64)
				}
				for _, j := range batch {
					var e Entry
					if !j.regular || !w.regularEntry(ctx, j.path, &e) {
						e = w.entry(ctx, j.path)
					}
					res = append(res, Result{Path: j.path, Entry: e})
				}
				results <- res
			}
		})
	}
	wk := &walker{s: s, ctx: ctx, jobs: jobs, results: results, free: free, onDir: onDir, prev: prev, seen: map[[2]uint64]bool{}, w: s.newWorker()}
	for _, root := range roots {
		wk.root(root)
	}
	wk.flush()
	close(jobs)
	wg.Wait()
	close(results)
	collect.Wait()
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("scan: %w", err)
	}
	return nil
}

// ScanPaths records the given paths (not their subtrees) in parallel.
func (s *Scanner) ScanPaths(ctx context.Context, paths []string) []Result {
	res := make([]Result, len(paths))
	var next sync.Mutex
	i := 0
	var wg sync.WaitGroup
	for range min(s.workers, len(paths)) {
		wg.Go(func() {
			w := s.newWorker()
			for {
				next.Lock()
				j := i
				i++
				next.Unlock()
				if j >= len(paths) {
					return
				}
				res[j] = Result{Path: paths[j], Entry: w.entry(ctx, paths[j])}
			}
		})
	}
	wg.Wait()
	return res
}

// walker enumerates the selection depth-first in one goroutine, records
// directories itself and hands everything else to the workers in batches.
type walker struct {
	s       *Scanner
	ctx     context.Context
	jobs    chan<- []job
	results chan<- []Result
	onDir   func(string)
	prev    Previous           // nil: a full scan
	same    []Result           // unchanged paths of a fast scan, not yet sent
	free    chan []Result      // batches the collector is done with, for reuse
	dbuf    []byte             // getdents buffer
	seen    map[[2]uint64]bool // directories entered, by (dev, inode)
	batch   []job
	w       *worker
}

func (wk *walker) root(root string) {
	sel := wk.s.sel
	if !sel.Selected(root) {
		return
	}
	var r *selRoot
	for i := range sel.roots {
		if _, ok := under(sel.roots[i].path, root); ok && sel.selectedBy(&sel.roots[i], root) {
			r = &sel.roots[i]
			break
		}
	}
	rel, _ := under(r.path, root)
	depth := 0
	if rel != "" {
		depth = 1
	}
	wk.visit(r, root, depth)
}

// visit records path and, when it is a directory the selection descends
// into, its entries.
func (wk *walker) visit(r *selRoot, path string, depth int) {
	if wk.ctx.Err() != nil {
		return
	}
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil || typeOf(st.Mode) != TypeDir {
		wk.add(job{path: path})
		return
	}
	var e Entry
	if wk.prev == nil || !wk.w.sameAs(path, &st, wk.prev, &e) {
		e = wk.w.entry(wk.ctx, path)
	}
	wk.results <- []Result{{Path: path, Entry: e}}
	if depth > 0 && !r.recursive {
		return
	}
	key := [2]uint64{st.Dev, st.Ino}
	if wk.seen[key] {
		return
	}
	wk.seen[key] = true
	if wk.onDir != nil {
		wk.onDir(path)
	}
	// O_NOFOLLOW: a directory swapped for a symlink since the lstat is not
	// entered.
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		wk.results <- []Result{{Path: path, Entry: withErr(e, "open directory", err)}}
		return
	}
	var dirs []string
	err = wk.list(fd, func(name []byte, typ uint8) {
		var child string
		if path == "/" {
			child = "/" + string(name)
		} else {
			child = path + "/" + string(name) // one allocation: the path kept
		}
		if wk.s.sel.excluded(r, child) {
			return
		}
		if typ == unix.DT_UNKNOWN { // file systems that do not say: ask
			var st unix.Stat_t
			if unix.Fstatat(fd, child[len(child)-len(name):], &st, unix.AT_SYMLINK_NOFOLLOW) == nil {
				typ = dtOf(typeOf(st.Mode))
			}
		}
		if typ == unix.DT_DIR {
			dirs = append(dirs, child)
		} else if !wk.unchanged(fd, child[len(child)-len(name):], child) {
			wk.add(job{path: child, regular: typ == unix.DT_REG})
		}
	})
	unix.Close(fd)
	if err != nil {
		wk.results <- []Result{{Path: path, Entry: withErr(e, "read directory", err)}}
	}
	wk.flushSame()
	for _, d := range dirs {
		wk.visit(r, d, depth+1)
	}
}

// list calls fn for every entry of the open directory fd but . and ..,
// with its name (valid during the call) and its d_type, reading the
// directory with getdents64 into the walker's buffer: no allocation per
// entry (os.File.ReadDir makes two).
func (wk *walker) list(fd int, fn func(name []byte, typ uint8)) error {
	if wk.dbuf == nil {
		wk.dbuf = make([]byte, 32<<10)
	}
	for {
		n, err := unix.Getdents(fd, wk.dbuf)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return err
		}
		if n <= 0 {
			return nil
		}
		// struct linux_dirent64: ino u64, off s64, reclen u16, type u8, name.
		for b := wk.dbuf[:n]; len(b) > 0; {
			if len(b) < 20 {
				return errors.New("getdents: short record")
			}
			reclen := int(binary.NativeEndian.Uint16(b[16:18]))
			if reclen < 20 || reclen > len(b) {
				return errors.New("getdents: bad record length")
			}
			typ, name := b[18], b[19:reclen]
			if i := bytes.IndexByte(name, 0); i >= 0 {
				name = name[:i]
			}
			b = b[reclen:]
			if len(name) == 0 || string(name) == "." || string(name) == ".." || bytes.IndexByte(name, '/') >= 0 {
				continue
			}
			fn(name, typ)
		}
	}
}

// dtOf is the d_type of a file type.
func dtOf(t FileType) uint8 {
	switch t {
	case TypeFile:
		return unix.DT_REG
	case TypeDir:
		return unix.DT_DIR
	case TypeSymlink:
		return unix.DT_LNK
	}
	return unix.DT_UNKNOWN
}

// unchanged records child (name in the open directory dir) from its
// previous state when a fast scan finds its metadata unchanged: one
// fstatat relative to dir, here in the walker (cheaper than a lookup of
// the whole path, and than handing it to a worker). False: a worker
// records it.
func (wk *walker) unchanged(dir int, name, child string) bool {
	if wk.prev == nil {
		return false
	}
	var st unix.Stat_t
	var e Entry
	if unix.Fstatat(dir, name, &st, unix.AT_SYMLINK_NOFOLLOW) != nil || !wk.w.sameAs(child, &st, wk.prev, &e) {
		return false
	}
	wk.same = append(wk.same, Result{Path: child, Entry: e})
	if len(wk.same) >= 64 { // the size of the batches recycled
		wk.flushSame()
	}
	return true
}

func (wk *walker) flushSame() {
	if len(wk.same) == 0 {
		return
	}
	wk.results <- wk.same
	select { // a batch the collector is done with: no garbage per file
	case wk.same = <-wk.free:
	default:
		wk.same = make([]Result, 0, 64)
	}
}

func withErr(e Entry, op string, err error) Entry {
	e.Err = fmt.Sprintf("%s: %v", op, err)
	return e
}

// job is one path for the workers; regular when the directory listing
// said it is a regular file (a hint: verified with fstat).
type job struct {
	path    string
	regular bool
}

func (wk *walker) add(j job) {
	wk.batch = append(wk.batch, j)
	if len(wk.batch) == 64 {
		wk.flush()
	}
}

func (wk *walker) flush() {
	if len(wk.batch) > 0 {
		wk.jobs <- wk.batch
		wk.batch = nil
	}
}
