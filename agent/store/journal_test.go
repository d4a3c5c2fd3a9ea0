package store

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sync/atomic"
	"syscall"
	"testing"
)

// crash stops s as kill -9 would: no checkpoint, no close of the journal.
func crash(t *testing.T, s *Store) {
	t.Helper()
	close(s.j.stop)
	s.j.wg.Wait()
	s.j.mu.Lock()
	s.j.f.Close()
	s.j.mu.Unlock()
	if err := s.db.Close(); err != nil {
		t.Fatal(err)
	}
}

func blockAt(i int) Block {
	return Block{Prefix: netip.PrefixFrom(netip.AddrFrom4([4]byte{203, 0, 113, byte(i)}), 32), Created: 1, Until: int64(1000 + i), Decision: 1}
}

func loaded(t *testing.T, s *Store) []string {
	t.Helper()
	var out []string
	if err := s.Load(func(b Block) { out = append(out, b.Prefix.String()) }, func(Decision) {}); err != nil {
		t.Fatal(err)
	}
	slices.Sort(out)
	return out
}

func segFiles(t *testing.T, dir string) []string {
	t.Helper()
	m, _ := filepath.Glob(filepath.Join(dir, "store.db.wal.*"))
	return m
}

// TestJournalCrashLosesNoCommit: every change Commit returned nil for is
// there after a crash that left it only in the journal (no checkpoint),
// also when a torn record follows it; deletes and kv deletes replay too.
func TestJournalCrashLosesNoCommit(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "store.db")
	s, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		if err := s.Commit(Change{PutBlocks: []Block{blockAt(i)}}); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Commit(Change{DelBlocks: []netip.Prefix{blockAt(2).Prefix}, PutKV: map[string][]byte{"a": []byte("1"), "b": []byte("2")}}); err != nil {
		t.Fatal(err)
	}
	if err := s.Commit(Change{PutKV: map[string][]byte{"b": nil}}); err != nil {
		t.Fatal(err)
	}
	crash(t, s)
	segs := segFiles(t, dir)
	if len(segs) == 0 {
		t.Fatal("no journal segment after a crash")
	}
	// A record cut short by the crash: half of a real one.
	rec, _ := encodeRecord(Change{PutBlocks: []Block{blockAt(9)}})
	f, _ := os.OpenFile(segs[len(segs)-1], os.O_APPEND|os.O_WRONLY, 0)
	f.Write(rec[:len(rec)/2])
	f.Close()

	s, err = Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	want := []string{"203.0.113.0/32", "203.0.113.1/32", "203.0.113.3/32", "203.0.113.4/32"}
	if got := loaded(t, s); !slices.Equal(got, want) {
		t.Fatalf("after crash and replay: %v, want %v", got, want)
	}
	if v, _ := s.Get("a"); string(v) != "1" {
		t.Errorf("kv a = %q", v)
	}
	if v, _ := s.Get("b"); v != nil {
		t.Errorf("kv b = %q, want deleted", v)
	}
}

// TestJournalReplayTwiceIsHarmless: a crash after a checkpoint's bbolt
// commit but before its segments were removed replays changes bbolt
// already holds; the state is the same.
func TestJournalReplayTwiceIsHarmless(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "store.db")
	s, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	changes := []Change{
		{PutBlocks: []Block{blockAt(1), blockAt(2)}},
		{DelBlocks: []netip.Prefix{blockAt(1).Prefix}},
		{PutBlocks: []Block{blockAt(1)}},
		{DelBlocks: []netip.Prefix{blockAt(2).Prefix}},
	}
	for _, c := range changes {
		if err := s.Commit(c); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Close(); err != nil { // checkpointed into bbolt
		t.Fatal(err)
	}
	var seg []byte
	for _, c := range changes {
		rec, _ := encodeRecord(c)
		seg = append(seg, rec...)
	}
	if err := os.WriteFile(filepath.Join(dir, "store.db.wal.00000000000000ff"), seg, 0o600); err != nil {
		t.Fatal(err)
	}
	s, err = Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if got := loaded(t, s); !slices.Equal(got, []string{"203.0.113.1/32"}) {
		t.Fatalf("after replaying checkpointed changes: %v", got)
	}
}

// failingFile fails Sync while fail is set.
type failingFile struct {
	File
	fail *atomic.Bool
}

func (f failingFile) Sync() error {
	if f.fail.Load() {
		return syscall.EIO
	}
	return f.File.Sync()
}

// TestJournalSyncFailureIsFinal: a commit whose fdatasync fails is not
// acknowledged; every later write is refused, even once syncs work again;
// after a reopen what was acknowledged is there and writes work.
func TestJournalSyncFailureIsFinal(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "store.db")
	var fail atomic.Bool
	wrap := func(f File) File { return failingFile{f, &fail} }
	s, err := OpenWith(path, Options{WrapJournal: wrap})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Commit(Change{PutBlocks: []Block{blockAt(1)}}); err != nil {
		t.Fatal(err)
	}
	fail.Store(true)
	if err := s.Commit(Change{PutBlocks: []Block{blockAt(2)}}); !errors.Is(err, syscall.EIO) {
		t.Fatalf("commit with a failing fdatasync: %v, want EIO", err)
	}
	fail.Store(false)
	if err := s.Commit(Change{PutBlocks: []Block{blockAt(3)}}); !errors.Is(err, ErrFailed) {
		t.Fatalf("commit after a failed fdatasync: %v, want ErrFailed until reopened", err)
	}
	if err := s.Put("k", []byte("v")); !errors.Is(err, ErrFailed) {
		t.Fatalf("put after a failed fdatasync: %v, want ErrFailed", err)
	}
	s.Close()
	s, err = Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if got := loaded(t, s); !slices.Contains(got, "203.0.113.1/32") || slices.Contains(got, "203.0.113.3/32") {
		t.Fatalf("after reopen: %v; want the acknowledged 203.0.113.1 and not the refused 203.0.113.3", got)
	}
	if err := s.Commit(Change{PutBlocks: []Block{blockAt(4)}}); err != nil {
		t.Fatalf("commit after reopen: %v", err)
	}
}
