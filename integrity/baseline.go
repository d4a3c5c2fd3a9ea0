package integrity

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// Errors callers branch on.
var (
	// ErrNoBaseline means no baseline has been recorded yet.
	ErrNoBaseline = errors.New("no integrity baseline recorded (run `parry integrity baseline`)")
	// ErrBaselineTampered means the stored baseline does not match its
	// recorded digest (or the digest the caller expected): it is not trusted.
	ErrBaselineTampered = errors.New("integrity baseline does not match its recorded digest: possible tampering")
)

// File names under the state directory.
const (
	BaselineFile   = "integrity.baseline"
	BaselineDigest = "integrity.baseline.sha256"
)

// Baseline file formats: PARRYIB2 adds the inode flags after the xattrs;
// PARRYIB1 (without them) is still read, its entries with flags 0.
const (
	baselineMagic   = "PARRYIB2"
	baselineMagicV1 = "PARRYIB1"
)

// Baseline is the recorded state of the selection.
type Baseline struct {
	Algo    string
	Created time.Time
	Entries map[string]Entry
}

// Paths returns the recorded paths, sorted.
func (b *Baseline) Paths() []string {
	ps := make([]string, 0, len(b.Entries))
	for p := range b.Entries {
		ps = append(ps, p)
	}
	slices.Sort(ps)
	return ps
}

// Encode serialises b compactly: sorted paths with shared-prefix
// compression and varint fields.
func (b *Baseline) Encode() []byte {
	buf := make([]byte, 0, 64+len(b.Entries)*96)
	buf = append(buf, baselineMagic...)
	buf = appendString(buf, b.Algo)
	buf = binary.AppendVarint(buf, b.Created.UnixNano())
	buf = binary.AppendUvarint(buf, uint64(len(b.Entries)))
	prev := ""
	for _, p := range b.Paths() {
		e := b.Entries[p]
		common := 0
		for common < len(p) && common < len(prev) && p[common] == prev[common] {
			common++
		}
		buf = binary.AppendUvarint(buf, uint64(common))
		buf = appendString(buf, p[common:])
		buf = append(buf, byte(e.Type))
		for _, v := range []uint64{uint64(e.Mode), uint64(e.UID), uint64(e.GID), e.Nlink, uint64(e.Size), e.Inode} {
			buf = binary.AppendUvarint(buf, v)
		}
		buf = binary.AppendVarint(buf, e.Mtime)
		buf = binary.AppendVarint(buf, e.Ctime)
		buf = appendString(buf, e.Target)
		buf = appendString(buf, e.Xattrs)
		buf = binary.AppendUvarint(buf, uint64(e.Flags))
		buf = appendString(buf, e.Err)
		if e.Hash == ([32]byte{}) {
			buf = append(buf, 0)
		} else {
			buf = append(buf, 1)
			buf = append(buf, e.Hash[:]...)
		}
		prev = p
	}
	return buf
}

func appendString(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

// DecodeBaseline parses what Encode wrote.
func DecodeBaseline(data []byte) (*Baseline, error) {
	return decodeBaseline(bytes.NewReader(data), int64(len(data)))
}

// maxBaselineString bounds one string of a baseline (a path, a symlink
// target, the xattrs, an error): a corrupt length never allocates more.
const maxBaselineString = 1 << 20

// decodeBaseline parses a baseline of size bytes from r as it reads it
// (LoadBaseline hashes the file meanwhile): the file is never held in
// memory beside the entries it decodes to. Each path is allocated once.
func decodeBaseline(r io.Reader, size int64) (*Baseline, error) {
	d := decoder{r: bufio.NewReaderSize(r, 64<<10)}
	magic := d.take(uint64(len(baselineMagic)))
	v1 := string(magic) == baselineMagicV1
	if d.err != nil || (!v1 && string(magic) != baselineMagic) {
		return nil, errors.New("decode baseline: bad magic")
	}
	b := &Baseline{Algo: d.str()}
	b.Created = time.Unix(0, d.varint()).UTC()
	n := d.uvarint()
	if n > uint64(size) {
		return nil, errors.New("decode baseline: bad entry count")
	}
	b.Entries = make(map[string]Entry, n)
	var path []byte
	for range n {
		common := d.uvarint()
		if common > uint64(len(path)) {
			return nil, errors.New("decode baseline: bad path prefix")
		}
		path = append(path[:common], d.take(d.uvarint())...)
		var e Entry
		e.Type = FileType(d.byte())
		e.Mode, e.UID, e.GID = uint32(d.uvarint()), uint32(d.uvarint()), uint32(d.uvarint())
		e.Nlink, e.Size, e.Inode = d.uvarint(), int64(d.uvarint()), d.uvarint()
		e.Mtime, e.Ctime = d.varint(), d.varint()
		e.Target, e.Xattrs = d.str(), d.str()
		if !v1 {
			if f := d.uvarint(); f <= 0xffffffff {
				e.Flags = uint32(f)
			} else if d.err == nil {
				d.err = errors.New("bad flags")
			}
		}
		e.Err = d.str()
		if d.byte() == 1 {
			copy(e.Hash[:], d.take(32))
		}
		if d.err != nil {
			return nil, fmt.Errorf("decode baseline: %w", d.err)
		}
		b.Entries[string(path)] = e
	}
	if _, err := d.r.ReadByte(); d.err == nil && err == nil {
		d.err = errors.New("trailing bytes")
	}
	if d.err != nil {
		return nil, fmt.Errorf("decode baseline: %w", d.err)
	}
	return b, nil
}

type decoder struct {
	r   *bufio.Reader
	buf []byte // scratch for take
	err error
}

func (d *decoder) fail(err error) {
	if d.err == nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			err = errors.New("truncated")
		}
		d.err = err
	}
}

func (d *decoder) uvarint() uint64 {
	if d.err != nil {
		return 0
	}
	v, err := binary.ReadUvarint(d.r)
	if err != nil {
		d.fail(err)
		return 0
	}
	return v
}

func (d *decoder) varint() int64 {
	if d.err != nil {
		return 0
	}
	v, err := binary.ReadVarint(d.r)
	if err != nil {
		d.fail(err)
		return 0
	}
	return v
}

// take reads n bytes into scratch space, valid until the next take.
func (d *decoder) take(n uint64) []byte {
	if d.err != nil {
		return nil
	}
	if n > maxBaselineString {
		d.fail(errors.New("string too long"))
		return nil
	}
	if uint64(cap(d.buf)) < n {
		d.buf = make([]byte, n)
	}
	b := d.buf[:n]
	if _, err := io.ReadFull(d.r, b); err != nil {
		d.fail(err)
		return nil
	}
	return b
}

func (d *decoder) byte() byte {
	if d.err != nil {
		return 0
	}
	c, err := d.r.ReadByte()
	if err != nil {
		d.fail(err)
	}
	return c
}

func (d *decoder) str() string {
	b := d.take(d.uvarint())
	if len(b) == 0 {
		return ""
	}
	return string(b)
}

// Digest is the baseline file digest as recorded: "sha256:<hex>".
func Digest(data []byte) string {
	sum := sha256.Sum256(data)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// SaveBaseline writes b under dir atomically (temp file, fsync, rename) with
// its digest alongside, and returns the digest for the audit chain.
func SaveBaseline(dir string, b *Baseline) (string, error) {
	data := b.Encode()
	digest := Digest(data)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", fmt.Errorf("save baseline: %w", err)
	}
	if err := writeAtomic(filepath.Join(dir, BaselineFile), data); err != nil {
		return "", fmt.Errorf("save baseline: %w", err)
	}
	if err := writeAtomic(filepath.Join(dir, BaselineDigest), []byte(digest+"\n")); err != nil {
		return "", fmt.Errorf("save baseline digest: %w", err)
	}
	return digest, nil
}

func writeAtomic(path string, data []byte) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Chmod(0o600); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(f.Name(), path); err != nil {
		return err
	}
	d, err := os.Open(filepath.Dir(path))
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// LoadBaseline reads the baseline under dir and checks it against the
// digest recorded alongside and, when want is not empty, against want (the
// digest the caller recorded in its audit chain). Any mismatch gives
// ErrBaselineTampered and no baseline.
func LoadBaseline(dir, want string) (*Baseline, string, error) {
	f, err := os.Open(filepath.Join(dir, BaselineFile))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, "", ErrNoBaseline
	}
	if err != nil {
		return nil, "", fmt.Errorf("load baseline: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, "", fmt.Errorf("load baseline: %w", err)
	}
	// Decoded while it is read and hashed: the entries are trusted only
	// once the digest of every byte read matches.
	h := sha256.New()
	b, decErr := decodeBaseline(io.TeeReader(f, h), fi.Size())
	if decErr != nil {
		b = nil
		if _, err := io.Copy(h, f); err != nil { // the rest, for the digest
			return nil, "", fmt.Errorf("load baseline: %w", err)
		}
	}
	digest := "sha256:" + hex.EncodeToString(h.Sum(nil))
	rec, err := os.ReadFile(filepath.Join(dir, BaselineDigest))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, digest, fmt.Errorf("load baseline: digest file missing: %w", ErrBaselineTampered)
	}
	if err != nil {
		return nil, digest, fmt.Errorf("load baseline: %w", err)
	}
	if strings.TrimSpace(string(rec)) != digest {
		return nil, digest, fmt.Errorf("load baseline: file %s, recorded %s: %w", digest, strings.TrimSpace(string(rec)), ErrBaselineTampered)
	}
	if want != "" && want != digest {
		return nil, digest, fmt.Errorf("load baseline: file %s, audit chain %s: %w", digest, want, ErrBaselineTampered)
	}
	if decErr != nil {
		return nil, digest, fmt.Errorf("load baseline: %w: %w", ErrBaselineTampered, decErr)
	}
	return b, digest, nil
}
