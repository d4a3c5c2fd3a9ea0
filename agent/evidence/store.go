package evidence

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// maxFileSize bounds what Show and Verify read back (a file is written by
// us under caps, so anything bigger was not).
const maxFileSize = 256 << 20

var idPattern = regexp.MustCompile(`^[0-9]{8}T[0-9]{6}Z-[0-9a-f]{8}$`)

// Store keeps evidence files in one directory (<state>/evidence), each
// written once with O_EXCL and mode 0400, and never modified.
type Store struct {
	dir string
	now func() time.Time
}

// OpenStore creates dir (mode 0700) if needed.
func OpenStore(dir string, now func() time.Time) (*Store, error) {
	if now == nil {
		now = time.Now
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("open evidence store: %w", err)
	}
	return &Store{dir: dir, now: now}, nil
}

// Dir is the directory holding the files.
func (st *Store) Dir() string { return st.dir }

// NewID returns a fresh, sortable evidence ID.
func (st *Store) NewID() string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return st.now().UTC().Format("20060102T150405Z") + "-" + hex.EncodeToString(b[:])
}

// Save writes the snapshot as a new file and returns its record with the
// SHA-256 of the bytes written. It assigns s.ID when empty. An existing
// file with the same ID is never overwritten.
func (st *Store) Save(s *Snapshot) (Record, error) {
	if s.ID == "" {
		s.ID = st.NewID()
	}
	if !idPattern.MatchString(s.ID) {
		return Record{}, fmt.Errorf("save evidence: %w: %q", ErrBadID, s.ID)
	}
	data, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return Record{}, fmt.Errorf("save evidence: %w", err)
	}
	data = append(data, '\n')
	path := filepath.Join(st.dir, s.ID+".json")
	if err := writeOnce(path, data); err != nil {
		return Record{}, fmt.Errorf("save evidence %s: %w", s.ID, err)
	}
	sum := sha256.Sum256(data)
	return Record{ID: s.ID, Path: path, SHA256: hex.EncodeToString(sum[:]), Size: int64(len(data)),
		Time: s.Started, Reason: s.Reason, Trigger: s.Trigger, Mode: "0400"}, nil
}

func writeOnce(path string, data []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL|unix.O_NOFOLLOW, 0o400)
	if err != nil {
		return err
	}
	_, werr := f.Write(data)
	if werr == nil {
		werr = f.Chmod(0o400) // whatever the umask did
	}
	if werr == nil {
		werr = f.Sync()
	}
	if cerr := f.Close(); werr == nil {
		werr = cerr
	}
	if werr != nil {
		_ = os.Remove(path)
		return werr
	}
	if d, err := os.Open(filepath.Dir(path)); err == nil {
		_ = d.Sync()
		_ = d.Close()
	}
	return nil
}

func (st *Store) path(id string) (string, error) {
	if !idPattern.MatchString(id) {
		return "", fmt.Errorf("%w: %q (expected e.g. 20260102T030405Z-0a1b2c3d)", ErrBadID, id)
	}
	return filepath.Join(st.dir, id+".json"), nil
}

// read returns the bytes of one file, refusing symlinks and oversized files.
func (st *Store) read(id string) ([]byte, os.FileInfo, error) {
	p, err := st.path(id)
	if err != nil {
		return nil, nil, err
	}
	f, err := os.OpenFile(p, os.O_RDONLY|unix.O_NOFOLLOW, 0)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil, fmt.Errorf("%w: %s", ErrNotFound, id)
	}
	if err != nil {
		return nil, nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, nil, err
	}
	data, err := io.ReadAll(io.LimitReader(f, maxFileSize+1))
	if err != nil {
		return nil, nil, err
	}
	if len(data) > maxFileSize {
		return nil, nil, fmt.Errorf("evidence %s: larger than %d bytes", id, maxFileSize)
	}
	return data, fi, nil
}

func record(id, path string, data []byte, fi os.FileInfo) Record {
	sum := sha256.Sum256(data)
	r := Record{ID: id, Path: path, SHA256: hex.EncodeToString(sum[:]), Size: int64(len(data)),
		Mode: fmt.Sprintf("%04o", fi.Mode().Perm())}
	var head struct {
		Reason  string    `json:"reason"`
		Trigger string    `json:"trigger"`
		Started time.Time `json:"started"`
	}
	if json.Unmarshal(data, &head) == nil {
		r.Reason, r.Trigger, r.Time = head.Reason, head.Trigger, head.Started
	}
	return r
}

// Show returns one snapshot and its record (hash computed now).
func (st *Store) Show(id string) (*Snapshot, Record, error) {
	data, fi, err := st.read(id)
	if err != nil {
		return nil, Record{}, fmt.Errorf("show evidence: %w", err)
	}
	var s Snapshot
	if err := json.Unmarshal(data, &s); err != nil {
		return nil, Record{}, fmt.Errorf("show evidence %s: %w", id, err)
	}
	p, _ := st.path(id)
	return &s, record(id, p, data, fi), nil
}

// Raw returns the exact bytes of one file (what the hash covers).
func (st *Store) Raw(id string) ([]byte, error) {
	data, _, err := st.read(id)
	if err != nil {
		return nil, fmt.Errorf("read evidence: %w", err)
	}
	return data, nil
}

// List returns the records of all files, oldest first. Files whose names
// are not evidence IDs are ignored.
func (st *Store) List() ([]Record, error) {
	ents, err := os.ReadDir(st.dir)
	if err != nil {
		return nil, fmt.Errorf("list evidence: %w", err)
	}
	var out []Record
	for _, e := range ents {
		id, ok := strings.CutSuffix(e.Name(), ".json")
		if !ok || !idPattern.MatchString(id) || !e.Type().IsRegular() {
			continue
		}
		data, fi, err := st.read(id)
		if err != nil {
			return nil, fmt.Errorf("list evidence: %w", err)
		}
		out = append(out, record(id, filepath.Join(st.dir, e.Name()), data, fi))
	}
	slices.SortFunc(out, func(a, b Record) int { return strings.Compare(a.ID, b.ID) })
	return out, nil
}

// Verify re-hashes the file and compares it with the recorded hash (from
// the audit chain). It also fails when the file is no longer mode 0400.
func (st *Store) Verify(id, recorded string) (Record, error) {
	data, fi, err := st.read(id)
	if err != nil {
		return Record{}, fmt.Errorf("verify evidence: %w", err)
	}
	p, _ := st.path(id)
	r := record(id, p, data, fi)
	if !strings.EqualFold(r.SHA256, recorded) {
		return r, fmt.Errorf("verify evidence %s: %w: recorded %s, file %s", id, ErrTampered, recorded, r.SHA256)
	}
	if fi.Mode().Perm() != 0o400 {
		return r, fmt.Errorf("verify evidence %s: mode %s, want 0400", id, r.Mode)
	}
	return r, nil
}
