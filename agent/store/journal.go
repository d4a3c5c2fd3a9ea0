package store

import (
	"bytes"
	"encoding/binary"
	"encoding/gob"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
)

// The journal: one sync per commit.
//
// A bbolt commit costs two fdatasyncs (its pages, then its meta page). The
// store puts a write-ahead journal in front of it: Commit appends the
// change as one checksummed record to the journal's current segment
// (store.db.wal.N) with one write, and makes it durable with one
// fdatasync; only then does it return nil. A background checkpoint applies
// the journaled changes to bbolt in one ordinary (fsync'd) transaction and
// then deletes the segments it applied; reads that look at bbolt during a
// run (Get, Lockdown, Pending) checkpoint first.
//
// Why no acknowledged change can be lost: Commit returns nil only after
// the fdatasync of a segment holding the whole record (length, CRC-32C,
// body), and the segment's directory entry was made durable (fsync of the
// directory) before the segment took its first record. A segment is
// deleted only after the bbolt transaction holding all its records has
// committed (bbolt's own two fsyncs). So at every moment each acknowledged
// change is either in bbolt's durable state, or in a durable segment, or
// both. Open replays every segment in order onto bbolt in one transaction
// before anything reads the store: replaying a change bbolt already holds
// is harmless, because a change is a list of absolute puts and deletes,
// and a sequence of them applied again, in order, ends in the same state.
// A record cut short by a crash (its length or checksum does not match)
// was never acknowledged — its fdatasync had not returned — and it and
// anything after it in its segment are dropped. A failed fdatasync makes
// the store failed (Commit): nothing of that commit is acknowledged, the
// record is cut off again (best effort), and writes are refused until the
// daemon restarts and replays what the disk really has.

const (
	walSuffix = ".wal."
	// checkpointEvery and checkpointRecords bound how much the journal
	// holds before a checkpoint: time, and records (a 100,000-block change
	// is one record).
	checkpointEvery   = time.Second
	checkpointRecords = 512
	maxRecord         = 1 << 30
)

var crcTable = crc32.MakeTable(crc32.Castagnoli)

// File is the journal's view of a segment file; tests inject failures.
type File interface {
	io.Writer
	Sync() error
	Truncate(size int64) error
	Close() error
}

// Options tune Open.
type Options struct {
	// WrapJournal wraps each journal segment as it is opened (failure
	// injection); nil: none.
	WrapJournal func(File) File
	Log         *slog.Logger
}

// walRecord is one journaled change. Deleted kv keys travel apart: a nil
// []byte in a map does not survive gob.
type walRecord struct {
	C     Change
	DelKV []string
}

type journal struct {
	dir, base string // segments are dir/base.wal.N
	wrap      func(File) File
	log       *slog.Logger

	// mu serializes appends and guards the fields below.
	mu    sync.Mutex
	f     File   // current segment
	n     uint64 // its number
	size  int64
	spare *spareSeg // next segment, created and made durable ahead
	done  []uint64  // segments full of checkpointed-to-be records, older than n
	queue []Change  // appended since the last checkpoint took the queue

	cpMu sync.Mutex // one checkpoint at a time
	kick chan struct{}
	stop chan struct{}
	wg   sync.WaitGroup
}

type spareSeg struct {
	f File
	n uint64
}

func (j *journal) segPath(n uint64) string {
	return filepath.Join(j.dir, fmt.Sprintf("%s%s%016x", j.base, walSuffix, n))
}

// segments lists the journal's segment numbers, in order.
func (j *journal) segments() ([]uint64, error) {
	ents, err := os.ReadDir(j.dir)
	if err != nil {
		return nil, err
	}
	var out []uint64
	for _, e := range ents {
		rest, ok := strings.CutPrefix(e.Name(), j.base+walSuffix)
		if !ok {
			continue
		}
		if n, err := strconv.ParseUint(rest, 16, 64); err == nil && len(rest) == 16 {
			out = append(out, n)
		}
	}
	slices.Sort(out)
	return out, nil
}

// replay applies every segment's records to db in one transaction and
// removes the segments; it returns the next segment number.
func (j *journal) replay(db *bolt.DB) (uint64, error) {
	segs, err := j.segments()
	if err != nil {
		return 0, fmt.Errorf("journal: %w", err)
	}
	if len(segs) == 0 {
		return 1, nil
	}
	var recs []walRecord
	for _, n := range segs {
		b, err := os.ReadFile(j.segPath(n))
		if err != nil {
			return 0, fmt.Errorf("journal: %w", err)
		}
		rs, torn := decodeSegment(b)
		if torn > 0 {
			j.log.Warn("store journal: dropped a record cut short by a crash (never acknowledged)", "segment", filepath.Base(j.segPath(n)), "bytes", torn)
		}
		recs = append(recs, rs...)
	}
	if len(recs) > 0 {
		err = db.Update(func(tx *bolt.Tx) error {
			for _, r := range recs {
				if err := apply(tx, r.change()); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			return 0, fmt.Errorf("journal replay: %w", err)
		}
		j.log.Info("store journal replayed", "records", len(recs), "segments", len(segs))
	}
	for _, n := range segs {
		if err := os.Remove(j.segPath(n)); err != nil {
			return 0, fmt.Errorf("journal: %w", err)
		}
	}
	return segs[len(segs)-1] + 1, nil
}

// decodeSegment reads the whole records of a segment; torn is the number
// of bytes after the last whole one.
func decodeSegment(b []byte) (recs []walRecord, torn int) {
	for len(b) > 0 {
		if len(b) < 8 {
			return recs, len(b)
		}
		n := binary.LittleEndian.Uint32(b)
		sum := binary.LittleEndian.Uint32(b[4:])
		if n > maxRecord || int(n) > len(b)-8 || crc32.Checksum(b[8:8+n], crcTable) != sum {
			return recs, len(b)
		}
		var r walRecord
		if err := gob.NewDecoder(bytes.NewReader(b[8 : 8+n])).Decode(&r); err != nil {
			return recs, len(b)
		}
		recs = append(recs, r)
		b = b[8+n:]
	}
	return recs, 0
}

func (r walRecord) change() Change {
	c := r.C
	if len(r.DelKV) > 0 {
		m := make(map[string][]byte, len(c.PutKV)+len(r.DelKV))
		for k, v := range c.PutKV {
			m[k] = v
		}
		for _, k := range r.DelKV {
			m[k] = nil
		}
		c.PutKV = m
	}
	return c
}

func encodeRecord(c Change) ([]byte, error) {
	r := walRecord{C: c}
	if len(c.PutKV) > 0 {
		put := make(map[string][]byte, len(c.PutKV))
		for k, v := range c.PutKV {
			if v == nil {
				r.DelKV = append(r.DelKV, k)
			} else {
				put[k] = v
			}
		}
		r.C.PutKV = put
	}
	var buf bytes.Buffer
	buf.Write(make([]byte, 8))
	if err := gob.NewEncoder(&buf).Encode(&r); err != nil {
		return nil, fmt.Errorf("journal: encode: %w", err)
	}
	b := buf.Bytes()
	if len(b)-8 > maxRecord {
		return nil, fmt.Errorf("journal: change of %d bytes is too large", len(b)-8)
	}
	binary.LittleEndian.PutUint32(b, uint32(len(b)-8))
	binary.LittleEndian.PutUint32(b[4:], crc32.Checksum(b[8:], crcTable))
	return b, nil
}

// create makes segment n and makes its directory entry durable.
func (j *journal) create(n uint64) (File, error) {
	f, err := os.OpenFile(j.segPath(n), os.O_CREATE|os.O_EXCL|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("journal: %w", err)
	}
	if err := syncDir(j.dir); err != nil {
		f.Close()
		return nil, fmt.Errorf("journal: %w", err)
	}
	var file File = f
	if j.wrap != nil {
		file = j.wrap(file)
	}
	return file, nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// append makes c durable in the journal. Caller holds no lock.
func (j *journal) append(c Change) error {
	rec, err := encodeRecord(c)
	if err != nil {
		return err
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	n, err := j.f.Write(rec)
	if err == nil && n != len(rec) {
		err = io.ErrShortWrite
	}
	if err == nil {
		if err = j.f.Sync(); err != nil {
			err = fmt.Errorf("journal fdatasync: %w", err)
		}
	}
	if err != nil {
		_ = j.f.Truncate(j.size) // best effort: a failed sync proves nothing either way
		return err
	}
	j.size += int64(len(rec))
	j.queue = append(j.queue, c)
	if len(j.queue) >= checkpointRecords || len(c.PutBlocks)+len(c.DelBlocks) >= 10_000 {
		select {
		case j.kick <- struct{}{}:
		default:
		}
	}
	return nil
}

// checkpoint applies the queued changes to db (one fsync'd transaction)
// and deletes the segments that held them.
func (j *journal) checkpoint(db *bolt.DB) error {
	j.cpMu.Lock()
	defer j.cpMu.Unlock()
	j.mu.Lock()
	if len(j.queue) == 0 {
		j.mu.Unlock()
		return nil
	}
	queue := j.queue
	j.queue = nil
	// Switch to a fresh segment, so that the old ones hold exactly queue.
	old := append(j.done, j.n)
	oldF := j.f
	sp := j.spare
	j.spare = nil
	if sp == nil {
		f, err := j.create(j.n + 1)
		if err != nil {
			j.queue = append(queue, j.queue...)
			j.mu.Unlock()
			return err
		}
		sp = &spareSeg{f: f, n: j.n + 1}
	}
	j.f, j.n, j.size, j.done = sp.f, sp.n, 0, nil
	j.mu.Unlock()
	oldF.Close()

	err := db.Update(func(tx *bolt.Tx) error {
		for _, c := range queue {
			if err := apply(tx, c); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		j.mu.Lock()
		j.done = append(old, j.done...)
		j.queue = append(queue, j.queue...)
		j.mu.Unlock()
		return fmt.Errorf("journal checkpoint: %w", err)
	}
	for _, n := range old {
		if err := os.Remove(j.segPath(n)); err != nil && !errors.Is(err, os.ErrNotExist) {
			j.log.Warn("store journal: cannot remove a checkpointed segment (replayed harmlessly at the next start)", "err", err)
		}
	}
	// The next switch needs no fsync on the commit path. Only a
	// checkpoint (cpMu, held) changes j.n.
	if f, err := j.create(j.n + 1); err == nil {
		j.mu.Lock()
		j.spare = &spareSeg{f: f, n: j.n + 1}
		j.mu.Unlock()
	}
	return nil
}

// run checkpoints every checkpointEvery, or when append kicks.
func (j *journal) run(s *Store) {
	defer j.wg.Done()
	t := time.NewTicker(checkpointEvery)
	defer t.Stop()
	for {
		select {
		case <-j.stop:
			return
		case <-t.C:
		case <-j.kick:
		}
		if s.failure() != nil {
			continue // the next start replays what the disk has
		}
		if err := j.checkpoint(s.db); err != nil {
			s.fail(err)
			j.log.Error("store journal checkpoint failed: writes are refused until parryd restarts", "err", err)
		}
	}
}

// close stops the checkpoints, runs a last one and closes the segments.
func (j *journal) close(db *bolt.DB) error {
	close(j.stop)
	j.wg.Wait()
	err := j.checkpoint(db)
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.f != nil {
		j.f.Close()
		if err == nil && j.size == 0 && len(j.queue) == 0 {
			os.Remove(j.segPath(j.n))
		}
	}
	if j.spare != nil {
		j.spare.f.Close()
		os.Remove(j.segPath(j.spare.n))
	}
	return err
}
