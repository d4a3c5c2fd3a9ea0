package integrity

import (
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Bounds of the copy store (the last accepted content of the files
// integrity.diff selects).
const (
	// MaxCopySize is the largest file whose content is kept (and diffed).
	MaxCopySize = 256 << 10
	// MaxCopyTotal bounds the compressed copies on disk; past it the
	// oldest copies are dropped (and counted).
	MaxCopyTotal = 16 << 20
	// CopiesDir is the copy store's directory under the state directory.
	CopiesDir = "integrity.copies"
)

const copyMagic = "PARRYCC1"

// copyStore keeps gzip-compressed copies of accepted file content under
// <state>/integrity.copies, one file per path, named by the SHA-256 of the
// path: a file name never comes from the path itself, so no path can
// point a copy outside the directory. Each copy starts with the path and
// the content hash it was taken at, so a copy is only used for the path
// and the baseline state it belongs to. The Monitor's lock guards it.
type copyStore struct {
	dir    string
	limit  int64 // MaxCopyTotal
	hashOf func([]byte) [32]byte
	// keep says whether a stored copy may stay: a path no longer selected,
	// or now a secret (a rule added since), is deleted when the store is
	// loaded.
	keep    func(path string) bool
	index   map[string]copyMeta // by path; nil until loaded
	total   int64
	dropped uint64 // copies dropped to stay under limit since start
	loadErr error
}

type copyMeta struct {
	name  string
	size  int64 // compressed, on disk
	saved time.Time
	hash  [32]byte
}

func newCopyStore(stateDir string, hashOf func([]byte) [32]byte) *copyStore {
	return &copyStore{dir: filepath.Join(stateDir, CopiesDir), limit: MaxCopyTotal, hashOf: hashOf}
}

func copyName(path string) string {
	sum := sha256.Sum256([]byte(path))
	return hex.EncodeToString(sum[:]) + ".gz"
}

// load reads the index of the stored copies (their headers) once.
func (cs *copyStore) load() {
	if cs.index != nil {
		return
	}
	cs.index = map[string]copyMeta{}
	ents, err := os.ReadDir(cs.dir)
	if errors.Is(err, fs.ErrNotExist) {
		return
	}
	if err != nil {
		cs.loadErr = fmt.Errorf("copy store: %w", err)
		return
	}
	for _, de := range ents {
		name := de.Name()
		if !de.Type().IsRegular() || len(name) != 64+3 || !strings.HasSuffix(name, ".gz") {
			if strings.HasPrefix(name, ".") { // a temp file left by a crash
				_ = os.Remove(filepath.Join(cs.dir, name))
			}
			continue
		}
		path, hash, _, err := cs.read(name, false)
		if err != nil || copyName(path) != name || (cs.keep != nil && !cs.keep(path)) {
			_ = os.Remove(filepath.Join(cs.dir, name)) // unreadable, or not ours: no use
			continue
		}
		info, err := de.Info()
		if err != nil {
			continue
		}
		cs.index[path] = copyMeta{name: name, size: info.Size(), saved: info.ModTime(), hash: hash}
		cs.total += info.Size()
	}
}

// read opens the copy name and returns its path, hash and (when content)
// its content.
func (cs *copyStore) read(name string, content bool) (string, [32]byte, []byte, error) {
	var hash [32]byte
	fd, err := openNoFollow(filepath.Join(cs.dir, name))
	if err != nil {
		return "", hash, nil, err
	}
	f := os.NewFile(uintptr(fd), name)
	defer f.Close()
	zr, err := gzip.NewReader(io.LimitReader(f, 2*MaxCopySize+4096))
	if err != nil {
		return "", hash, nil, err
	}
	r := io.LimitReader(zr, MaxCopySize+1+8+2+4096+32) // header + content, bounded
	hdr := make([]byte, len(copyMagic))
	if _, err := io.ReadFull(r, hdr); err != nil || string(hdr) != copyMagic {
		return "", hash, nil, errors.New("bad copy header")
	}
	br := byteReader{r: r}
	n, err := binary.ReadUvarint(&br)
	if err != nil || n > 4096 {
		return "", hash, nil, errors.New("bad copy header")
	}
	p := make([]byte, n)
	if _, err := io.ReadFull(r, p); err != nil {
		return "", hash, nil, err
	}
	if _, err := io.ReadFull(r, hash[:]); err != nil {
		return "", hash, nil, err
	}
	if !content {
		return string(p), hash, nil, nil
	}
	data, err := io.ReadAll(r)
	if err != nil {
		return "", hash, nil, err
	}
	if len(data) > MaxCopySize || cs.hashOf(data) != hash {
		return "", hash, nil, errors.New("copy does not match its recorded hash")
	}
	return string(p), hash, data, nil
}

type byteReader struct{ r io.Reader }

func (b *byteReader) ReadByte() (byte, error) {
	var c [1]byte
	_, err := io.ReadFull(b.r, c[:])
	return c[0], err
}

// get returns the kept content of path if it was taken at hash.
func (cs *copyStore) get(path string, hash [32]byte) ([]byte, error) {
	cs.load()
	meta, ok := cs.index[path]
	switch {
	case !ok && cs.loadErr != nil:
		return nil, cs.loadErr
	case !ok:
		return nil, errNoCopy
	case meta.hash != hash:
		return nil, errStaleCopy
	}
	p, _, data, err := cs.read(meta.name, true)
	if err == nil && p != path {
		err = errors.New("copy belongs to another path")
	}
	if err != nil {
		return nil, fmt.Errorf("copy store: %w", err)
	}
	return data, nil
}

var (
	errNoCopy    = errors.New("no copy of the accepted content was kept")
	errStaleCopy = errors.New("the copy kept is of another version")
)

// put keeps content (already checked to hash to hash) as path's copy,
// dropping the oldest copies of other paths while the total is over the
// limit.
func (cs *copyStore) put(path string, hash [32]byte, content []byte, now time.Time) error {
	cs.load()
	if meta, ok := cs.index[path]; ok && meta.hash == hash {
		return nil
	}
	var buf bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&buf, gzip.BestCompression)
	zw.Write([]byte(copyMagic))
	zw.Write(binary.AppendUvarint(nil, uint64(len(path))))
	zw.Write([]byte(path))
	zw.Write(hash[:])
	zw.Write(content)
	if err := zw.Close(); err != nil {
		return fmt.Errorf("copy store: %w", err)
	}
	if err := cs.mkdir(); err != nil {
		return err
	}
	name := copyName(path)
	if err := writeAtomic(filepath.Join(cs.dir, name), buf.Bytes()); err != nil {
		return fmt.Errorf("copy store: %w", err)
	}
	cs.total -= cs.index[path].size
	cs.index[path] = copyMeta{name: name, size: int64(buf.Len()), saved: now, hash: hash}
	cs.total += int64(buf.Len())
	for cs.total > cs.limit {
		oldest := ""
		for p, m := range cs.index {
			if p != path && (oldest == "" || m.saved.Before(cs.index[oldest].saved)) {
				oldest = p
			}
		}
		if oldest == "" {
			break
		}
		cs.remove(oldest)
		cs.dropped++
	}
	return nil
}

// mkdir makes the store's directory, mode 0700, refusing a symlink there.
func (cs *copyStore) mkdir() error {
	var st unix.Stat_t
	err := unix.Lstat(cs.dir, &st)
	if errors.Is(err, unix.ENOENT) {
		if err := os.MkdirAll(filepath.Dir(cs.dir), 0o700); err != nil {
			return fmt.Errorf("copy store: %w", err)
		}
		if err := unix.Mkdir(cs.dir, 0o700); err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("copy store: mkdir: %w", err)
		}
		err = unix.Lstat(cs.dir, &st)
	}
	if err != nil {
		return fmt.Errorf("copy store: %w", err)
	}
	if typeOf(st.Mode) != TypeDir {
		return fmt.Errorf("copy store: %s is not a directory", cs.dir)
	}
	if st.Mode&0o077 != 0 {
		if err := os.Chmod(cs.dir, 0o700); err != nil {
			return fmt.Errorf("copy store: %w", err)
		}
	}
	return nil
}

func (cs *copyStore) remove(path string) {
	meta, ok := cs.index[path]
	if !ok {
		return
	}
	_ = os.Remove(filepath.Join(cs.dir, meta.name))
	cs.total -= meta.size
	delete(cs.index, path)
}

// keepOnly drops every copy keep rejects.
func (cs *copyStore) keepOnly(keep func(path string, hash [32]byte) bool) {
	cs.load()
	for _, p := range slices.Sorted(maps.Keys(cs.index)) {
		if !keep(p, cs.index[p].hash) {
			cs.remove(p)
		}
	}
}

// readCopy reads path for the copy store: a regular file (never through a
// symlink) of at most MaxCopySize bytes, hashing to want.
func readCopy(path string, want [32]byte, hashOf func([]byte) [32]byte) ([]byte, error) {
	data, err := readBounded(path)
	if err != nil {
		return nil, err
	}
	if hashOf(data) != want {
		return nil, errors.New("changed while it was read")
	}
	return data, nil
}

var errTooLargeToKeep = fmt.Errorf("larger than %d KiB", MaxCopySize>>10)

// readBounded reads the regular file path, refusing one over MaxCopySize.
func readBounded(path string) ([]byte, error) {
	fd, err := openNoFollow(path)
	if err != nil {
		return nil, err
	}
	f := os.NewFile(uintptr(fd), path)
	defer f.Close()
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return nil, err
	}
	if typeOf(st.Mode) != TypeFile {
		return nil, errors.New("not a regular file")
	}
	if st.Size > MaxCopySize {
		return nil, errTooLargeToKeep
	}
	data, err := io.ReadAll(io.LimitReader(f, MaxCopySize+1))
	if err != nil {
		return nil, err
	}
	if len(data) > MaxCopySize {
		return nil, errTooLargeToKeep
	}
	return data, nil
}
