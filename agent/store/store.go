// Package store is parryd's durable state: active blocks, the decisions
// that made them, the lockdown state, and a small key/value space for other
// parts of the daemon. It is a bbolt file; every Commit is one fsync'd
// transaction, so a block the agent acknowledged survives kill -9.
//
// Records are kept compact (100,000 blocks are a few MiB on disk): a block
// is its prefix as key and three varints as value; the decision's text
// (reason, source, cause) lives once in its own bucket.
package store

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"runtime/debug"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

var (
	bucketBlocks    = []byte("blocks")
	bucketDecisions = []byte("decisions")
	bucketState     = []byte("state")
	bucketKV        = []byte("kv")
	bucketPending   = []byte("pending_audit")
	keyLockdown     = []byte("lockdown")
)

// Sentinel errors.
var (
	ErrCorrupt = errors.New("store: corrupt record")
	// ErrFailed: an earlier commit failed (an fsync, a full disk); the
	// store refuses writes until it is opened again (Commit).
	ErrFailed = errors.New("store: a commit failed earlier")
)

// Block is one active block: one record per target and scope (protocol,
// port, action; all zero for a plain drop on every port), keyed by them
// (blockKey).
type Block struct {
	Prefix   netip.Prefix
	Proto    uint8  // IP protocol (6 tcp, 17 udp); 0: every protocol
	Port     uint16 // destination port of Proto; 0: every port
	Action   uint8  // 0 drop, 1 reject
	Created  int64  // unix milliseconds
	Until    int64  // unix milliseconds; 0 means permanent
	Decision uint64 // Seq of the Decision record that set it
}

// Decision is the shared text of the decision behind one or more blocks.
type Decision struct {
	Seq    uint64          `json:"seq"`
	ID     string          `json:"id"`
	Time   time.Time       `json:"time"`
	Reason string          `json:"reason,omitempty"`
	Source string          `json:"source,omitempty"`
	Origin string          `json:"origin,omitempty"`
	Rule   string          `json:"rule,omitempty"`
	Sender string          `json:"sender,omitempty"`
	Cause  json.RawMessage `json:"cause,omitempty"`
	Admin  bool            `json:"admin,omitempty"` // an admin's explicit block: only an admin lifts or shortens it
}

// Lockdown is the persisted lockdown state.
type Lockdown struct {
	ID      string         `json:"id"`
	Since   time.Time      `json:"since"`
	Until   time.Time      `json:"until"`
	Allow   []netip.Prefix `json:"allow,omitempty"`
	Isolate bool           `json:"isolate,omitempty"`
	Reason  string         `json:"reason,omitempty"`
	Source  string         `json:"source,omitempty"`
	Sender  string         `json:"sender,omitempty"`
}

// Pending is the audit record of a change, committed in the same
// transaction as the change and deleted once its audit line is durable.
// After a crash between the commit and the audit write, the daemon finds it
// at start and writes the missing line (agent/anchor.go).
type Pending struct {
	Key    uint64          `json:"-"`
	Event  string          `json:"event"`
	Time   time.Time       `json:"time"`
	Fields json.RawMessage `json:"fields"` // the audit line's fields, exactly as written
}

// Store is the open database.
type Store struct {
	db   *bolt.DB
	path string

	j *journal

	mu     sync.Mutex
	failed error // the first failed commit: final (Commit)

	closeOnce sync.Once
	closeErr  error
}

// Open opens (creating if needed) the store file at path. A file that
// fails the consistency check (see check) is refused with a
// *CorruptError and left as it is; Open never panics on a bad file.
func Open(path string) (*Store, error) { return OpenWith(path, Options{}) }

// OpenWith is Open with options. It replays the journal (journal.go) into
// the file before anything reads it.
func OpenWith(path string, o Options) (*Store, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return nil, fmt.Errorf("open store: %w", err)
	}
	opts := options()
	if err := check(path, opts); err != nil {
		return nil, openErr(path, err)
	}
	db, err := openRW(path, opts)
	if err != nil {
		return nil, openErr(path, err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bucketBlocks, bucketDecisions, bucketState, bucketKV, bucketPending} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("open store %s: create buckets: %w", path, err)
	}
	if o.Log == nil {
		o.Log = slog.Default()
	}
	if n, err := migrateKeys(db); err != nil {
		db.Close()
		return nil, fmt.Errorf("open store %s: migrate block keys: %w", path, err)
	} else if n > 0 {
		o.Log.Info("store migrated to one record per block and scope", "blocks", n)
	}
	j := &journal{dir: filepath.Dir(path), base: filepath.Base(path), wrap: o.WrapJournal, log: o.Log,
		kick: make(chan struct{}, 1), stop: make(chan struct{})}
	if j.n, err = j.replay(db); err == nil {
		j.f, err = j.create(j.n)
	}
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("open store %s: %w", path, err)
	}
	s := &Store{db: db, path: path, j: j}
	j.wg.Add(1)
	go j.run(s)
	return s, nil
}

func options() bolt.Options {
	return bolt.Options{
		Timeout:        2 * time.Second, // another parryd holds the lock
		NoFreelistSync: true,
		FreelistType:   bolt.FreelistMapType,
	}
}

// openRW is bolt.Open with a panic (a bad page found while rebuilding the
// free list) turned into a CorruptError. After a panic the descriptor is
// lost; the caller is expected to stop.
func openRW(path string, opts bolt.Options) (db *bolt.DB, err error) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if r := recover(); r != nil {
			db, err = nil, recovered(path, r)
		}
	}()
	db, err = bolt.Open(path, 0o600, &opts)
	return db, corruptErr(path, err)
}

func openErr(path string, err error) error {
	var ce *CorruptError
	switch {
	case errors.As(err, &ce):
		return err // already names the file
	case errors.Is(err, berrors.ErrTimeout):
		return fmt.Errorf("open store %s: locked by another process (is another parryd running with this state dir?): %w", path, err)
	}
	return fmt.Errorf("open store %s: %w", path, err)
}

// Path is the store file.
func (s *Store) Path() string { return s.path }

// Close checkpoints the journal and closes the file.
func (s *Store) Close() error {
	s.closeOnce.Do(func() {
		s.closeErr = s.j.close(s.db)
		if s.failure() != nil {
			s.closeErr = nil // the journal keeps what the disk has; the next Open replays it
		}
		s.closeErr = errors.Join(s.closeErr, s.db.Close())
	})
	return s.closeErr
}

// sync applies the journal to the file, so that a read of bbolt sees
// every commit. A failed store reads what the file has.
func (s *Store) sync() {
	if s.failure() != nil {
		return
	}
	if err := s.j.checkpoint(s.db); err != nil {
		s.fail(err)
	}
}

// Change is one transaction: blocks to put and delete, decisions to put and
// delete.
type Change struct {
	PutBlocks     []Block
	DelBlocks     []netip.Prefix
	PutDecisions  []Decision
	DelDecisions  []uint64
	SetLockdown   *Lockdown // non-nil: store it
	ClearLockdown bool
	PutPending    []Pending         // audit records of this change
	DelPending    []uint64          // keys of audit records now durable in the log
	PutKV         map[string][]byte // key/value entries (nil value: delete)
}

// Commit applies c in one fsync'd transaction.
//
// A failed commit is final: after it every write is refused (ErrFailed)
// until the store is opened again. An fsync that failed may have lost
// pages that a later one that succeeds does not write again (the kernel
// drops the error and the dirty state), and bbolt's in-memory view of a
// transaction whose commit failed half-way is not to be trusted; a
// restart re-reads the file, which is the truth.
func (s *Store) Commit(c Change) error {
	if err := s.failure(); err != nil {
		return err
	}
	if err := s.j.append(c); err != nil {
		return s.fail(fmt.Errorf("store commit: %w", err))
	}
	return nil
}

// apply writes c in tx.
func apply(tx *bolt.Tx, c Change) error {
	bb, db := tx.Bucket(bucketBlocks), tx.Bucket(bucketDecisions)
	// bbolt keeps pointers to keys and values until commit: carve them
	// from one slab that never reallocates.
	slab := make([]byte, 0, (len(c.PutBlocks)+len(c.DelBlocks))*(blockKeyMax+3*binary.MaxVarintLen64))
	carve := func(b []byte) []byte {
		start := len(slab)
		slab = append(slab, b...)
		return slab[start:len(slab):len(slab)]
	}
	var kbuf [blockKeyMax]byte
	var vbuf [3 * binary.MaxVarintLen64]byte
	for _, d := range c.PutDecisions {
		v, err := json.Marshal(d)
		if err != nil {
			return err
		}
		if err := db.Put(seqKey(d.Seq), v); err != nil {
			return err
		}
	}
	for _, p := range c.DelBlocks {
		if err := bb.Delete(carve(blockKey(kbuf[:0], Block{Prefix: p}))); err != nil {
			return err
		}
	}
	for _, b := range c.PutBlocks {
		v := binary.AppendUvarint(vbuf[:0], uint64(b.Created))
		v = binary.AppendUvarint(v, uint64(b.Until))
		v = binary.AppendUvarint(v, b.Decision)
		if err := bb.Put(carve(blockKey(kbuf[:0], b)), carve(v)); err != nil {
			return err
		}
	}
	for _, seq := range c.DelDecisions {
		if err := db.Delete(seqKey(seq)); err != nil {
			return err
		}
	}
	pb := tx.Bucket(bucketPending)
	for _, p := range c.PutPending {
		v, err := json.Marshal(p)
		if err != nil {
			return err
		}
		if err := pb.Put(seqKey(p.Key), v); err != nil {
			return err
		}
	}
	for _, k := range c.DelPending {
		if err := pb.Delete(seqKey(k)); err != nil {
			return err
		}
	}
	kv := tx.Bucket(bucketKV)
	for k, v := range c.PutKV {
		var err error
		if v == nil {
			err = kv.Delete([]byte(k))
		} else {
			err = kv.Put([]byte(k), v)
		}
		if err != nil {
			return err
		}
	}
	st := tx.Bucket(bucketState)
	if c.ClearLockdown {
		if err := st.Delete(keyLockdown); err != nil {
			return err
		}
	}
	if c.SetLockdown != nil {
		v, err := json.Marshal(c.SetLockdown)
		if err != nil {
			return err
		}
		if err := st.Put(keyLockdown, v); err != nil {
			return err
		}
	}
	return nil
}

// fail makes err the store's final failure and returns it.
func (s *Store) fail(err error) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.failed == nil {
		s.failed = err
	}
	return err
}

// failure is ErrFailed with the first failure, or nil.
func (s *Store) failure() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.failed == nil {
		return nil
	}
	return fmt.Errorf("%w (%v): writes are refused until parryd restarts", ErrFailed, s.failed)
}

// Failed is the store's final failure, or nil.
func (s *Store) Failed() error { return s.failure() }

// Load calls block for every stored block and decision for every stored
// decision, in one read transaction.
func (s *Store) Load(block func(Block), decision func(Decision)) (err error) {
	s.sync()
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("store load: %w", recovered(s.path, r))
		}
	}()
	err = s.db.View(func(tx *bolt.Tx) error {
		err := tx.Bucket(bucketDecisions).ForEach(func(k, v []byte) error {
			var d Decision
			if err := json.Unmarshal(v, &d); err != nil {
				return fmt.Errorf("%w: decision %x: %v", ErrCorrupt, k, err)
			}
			decision(d)
			return nil
		})
		if err != nil {
			return err
		}
		return tx.Bucket(bucketBlocks).ForEach(func(k, v []byte) error {
			b, err := decodeBlock(k, v)
			if err != nil {
				return err
			}
			block(b)
			return nil
		})
	})
	if err != nil {
		return fmt.Errorf("store load: %w", err)
	}
	return nil
}

// Pending returns the audit records not yet known durable in the audit
// log, in key order.
func (s *Store) Pending() ([]Pending, error) {
	s.sync()
	var out []Pending
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketPending).ForEach(func(k, v []byte) error {
			var p Pending
			if len(k) != 8 {
				return fmt.Errorf("%w: pending audit key %x", ErrCorrupt, k)
			}
			if err := json.Unmarshal(v, &p); err != nil {
				return fmt.Errorf("%w: pending audit %x: %v", ErrCorrupt, k, err)
			}
			p.Key = binary.BigEndian.Uint64(k)
			out = append(out, p)
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("store pending audit: %w", err)
	}
	return out, nil
}

// Lockdown returns the stored lockdown, or nil.
func (s *Store) Lockdown() (*Lockdown, error) {
	s.sync()
	var l *Lockdown
	err := s.db.View(func(tx *bolt.Tx) error {
		v := tx.Bucket(bucketState).Get(keyLockdown)
		if v == nil {
			return nil
		}
		l = new(Lockdown)
		return json.Unmarshal(v, l)
	})
	if err != nil {
		return nil, fmt.Errorf("store lockdown: %w", err)
	}
	return l, nil
}

// Get reads key from the key/value space (nil if absent). Namespace keys by
// owner ("fleet/last_seq").
func (s *Store) Get(key string) ([]byte, error) {
	s.sync()
	var out []byte
	err := s.db.View(func(tx *bolt.Tx) error {
		if v := tx.Bucket(bucketKV).Get([]byte(key)); v != nil {
			out = append([]byte(nil), v...)
		}
		return nil
	})
	return out, err
}

// Put writes key in the key/value space (fsync'd); a nil value deletes it.
func (s *Store) Put(key string, value []byte) error {
	return s.Commit(Change{PutKV: map[string][]byte{key: value}})
}

func seqKey(seq uint64) []byte { return binary.BigEndian.AppendUint64(nil, seq) }

// prefixKey is 4 or 16 address bytes then the prefix length.
func prefixKey(buf []byte, p netip.Prefix) []byte {
	a := p.Addr()
	if a.Is4() {
		b := a.As4()
		buf = append(buf[:0], b[:]...)
	} else {
		b := a.As16()
		buf = append(buf[:0], b[:]...)
	}
	return append(buf, byte(p.Bits()))
}

// blockKeyMax is the longest block key: an IPv6 one.
const blockKeyMax = 17 + 4

// blockKey is a block record's key: prefixKey, then the scope: protocol,
// port (big endian), action. Stores from before logical blocks keyed a
// block by prefixKey alone (migrateKeys).
func blockKey(buf []byte, b Block) []byte {
	buf = prefixKey(buf, b.Prefix)
	return append(buf, b.Proto, byte(b.Port>>8), byte(b.Port), b.Action)
}

func decodeBlock(k, v []byte) (Block, error) {
	if len(k) != 5+4 && len(k) != 17+4 {
		return Block{}, fmt.Errorf("%w: block key %x", ErrCorrupt, k)
	}
	pk, sk := k[:len(k)-4], k[len(k)-4:]
	a, _ := netip.AddrFromSlice(pk[:len(pk)-1])
	p, err := a.Prefix(int(pk[len(pk)-1]))
	if err != nil {
		return Block{}, fmt.Errorf("%w: block key %x", ErrCorrupt, k)
	}
	var vals [3]uint64
	for i := range vals {
		x, n := binary.Uvarint(v)
		if n <= 0 {
			return Block{}, fmt.Errorf("%w: block %s value %x", ErrCorrupt, p, v)
		}
		vals[i], v = x, v[n:]
	}
	return Block{Prefix: p, Proto: sk[0], Port: uint16(sk[1])<<8 | uint16(sk[2]), Action: sk[3],
		Created: int64(vals[0]), Until: int64(vals[1]), Decision: vals[2]}, nil
}

// migrateKeys rewrites the block keys of a store from before logical
// blocks (the prefix alone: 5 or 17 bytes) as record keys with the plain
// scope, in one transaction; a store already migrated is not touched. It
// runs before the journal is replayed (the journal writes record keys).
func migrateKeys(db *bolt.DB) (int, error) {
	n := 0
	err := db.Update(func(tx *bolt.Tx) error {
		bb := tx.Bucket(bucketBlocks)
		type kv struct{ k, v []byte }
		var old []kv
		err := bb.ForEach(func(k, v []byte) error {
			if len(k) == 5 || len(k) == 17 {
				old = append(old, kv{append([]byte(nil), k...), append([]byte(nil), v...)})
			}
			return nil
		})
		if err != nil {
			return err
		}
		for _, e := range old {
			if err := bb.Delete(e.k); err != nil {
				return err
			}
			if err := bb.Put(append(e.k, 0, 0, 0, 0), e.v); err != nil {
				return err
			}
		}
		n = len(old)
		return nil
	})
	return n, err
}

// Decision reads one decision record by its seq (with its cause); ok false
// when there is none.
func (s *Store) Decision(seq uint64) (d Decision, ok bool, err error) {
	s.sync() // the journal first: a read of bbolt sees every commit
	err = s.db.View(func(tx *bolt.Tx) error {
		v := tx.Bucket(bucketDecisions).Get(seqKey(seq))
		if v == nil {
			return nil
		}
		ok = true
		if err := json.Unmarshal(v, &d); err != nil {
			return fmt.Errorf("%w: decision %d: %v", ErrCorrupt, seq, err)
		}
		return nil
	})
	return d, ok, err
}
