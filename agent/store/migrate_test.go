package store

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"
	bolt "go.etcd.io/bbolt"
)

// A store written before logical blocks (a block keyed by its prefix
// alone) is migrated on open: its blocks load with the plain scope, they
// can be deleted and replaced by their record key, and a scoped record of
// the same prefix is a record of its own. A second open changes nothing.
func TestMigrateOldBlockKeys(t *testing.T) {
	path := filepath.Join(t.TempDir(), "store.db")
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	old := []Block{
		{Prefix: netip.MustParsePrefix("203.0.113.7/32"), Created: 1000, Until: 2000, Decision: 1},
		{Prefix: netip.MustParsePrefix("198.51.100.0/24"), Created: 1000, Until: 0, Decision: 2},
		{Prefix: netip.MustParsePrefix("2001:db8::/48"), Created: 1500, Until: 9000, Decision: 1},
	}
	err = db.Update(func(tx *bolt.Tx) error {
		bb, err := tx.CreateBucketIfNotExists(bucketBlocks)
		if err != nil {
			return err
		}
		for _, b := range old {
			v := binary.AppendUvarint(nil, uint64(b.Created))
			v = binary.AppendUvarint(v, uint64(b.Until))
			v = binary.AppendUvarint(v, b.Decision)
			if err := bb.Put(prefixKey(nil, b.Prefix), v); err != nil { // the old key: the prefix alone
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	db.Close()

	load := func(s *Store) []Block {
		t.Helper()
		var got []Block
		if err := s.Load(func(b Block) { got = append(got, b) }, func(Decision) {}); err != nil {
			t.Fatalf("load: %v", err)
		}
		return got
	}
	byPrefix := func(bs []Block) map[string]string {
		m := map[string]string{}
		for _, b := range bs {
			m[fmt.Sprintf("%s proto %d", b.Prefix, b.Proto)] = fmt.Sprintf("%+v", b)
		}
		return m
	}
	s, err := Open(path)
	if err != nil {
		t.Fatalf("open an old store: %v", err)
	}
	if diff := cmp.Diff(byPrefix(old), byPrefix(load(s))); diff != "" {
		t.Fatalf("old blocks after migration (-want +got):\n%s", diff)
	}
	scoped := Block{Prefix: old[0].Prefix, Proto: 6, Port: 22, Action: 1, Created: 3000, Until: 4000, Decision: 3}
	if err := s.Commit(Change{DelBlocks: []netip.Prefix{old[1].Prefix}, PutBlocks: []Block{scoped}}); err != nil {
		t.Fatal(err)
	}
	want := []Block{old[0], old[2], scoped}
	if diff := cmp.Diff(byPrefix(want), byPrefix(load(s))); diff != "" {
		t.Fatalf("after a delete of a migrated block and a scoped record (-want +got):\n%s", diff)
	}
	s.Close()
	s, err = Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if diff := cmp.Diff(byPrefix(want), byPrefix(load(s))); diff != "" {
		t.Fatalf("after a second open (-want +got):\n%s", diff)
	}
}
