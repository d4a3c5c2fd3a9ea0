package store

import (
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestRoundTrip(t *testing.T) {
	path := filepath.Join(t.TempDir(), "store.db")
	s, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Date(2026, 11, 27, 0, 0, 0, 0, time.UTC)
	dec := Decision{Seq: 7, ID: "abc", Time: now, Reason: "ssh", Source: "cli", Sender: "uid=0(root)", Cause: []byte(`[{"kind":"x"}]`)}
	blocks := []Block{
		{Prefix: netip.MustParsePrefix("203.0.113.7/32"), Created: now.UnixMilli(), Until: now.Add(time.Hour).UnixMilli(), Decision: 7},
		{Prefix: netip.MustParsePrefix("198.51.100.0/24"), Created: now.UnixMilli(), Until: 0, Decision: 7},
		{Prefix: netip.MustParsePrefix("2001:db8::/48"), Created: now.UnixMilli(), Until: now.Add(time.Minute).UnixMilli(), Decision: 7},
	}
	lock := &Lockdown{ID: "l1", Since: now, Until: now.Add(time.Hour), Allow: []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24")}}
	if err := s.Commit(Change{PutDecisions: []Decision{dec}, PutBlocks: blocks, SetLockdown: lock}); err != nil {
		t.Fatal(err)
	}
	if err := s.Commit(Change{DelBlocks: []netip.Prefix{blocks[2].Prefix}}); err != nil {
		t.Fatal(err)
	}
	if err := s.Put("fleet/x", []byte("1")); err != nil {
		t.Fatal(err)
	}
	s.Close()

	s, err = Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var gotB []Block
	var gotD []Decision
	if err := s.Load(func(b Block) { gotB = append(gotB, b) }, func(d Decision) { gotD = append(gotD, d) }); err != nil {
		t.Fatal(err)
	}
	slices.SortFunc(gotB, func(a, b Block) int { return a.Prefix.Addr().Compare(b.Prefix.Addr()) })
	want := []Block{blocks[1], blocks[0]}
	if diff := cmp.Diff(want, gotB, cmp.Comparer(func(a, b netip.Prefix) bool { return a == b })); diff != "" {
		t.Errorf("blocks (-want +got):\n%s", diff)
	}
	if len(gotD) != 1 || gotD[0].Reason != "ssh" || string(gotD[0].Cause) != `[{"kind":"x"}]` {
		t.Errorf("decisions %+v", gotD)
	}
	l, err := s.Lockdown()
	if err != nil || l == nil || l.ID != "l1" || !l.Until.Equal(lock.Until) {
		t.Errorf("lockdown %+v %v", l, err)
	}
	if v, _ := s.Get("fleet/x"); string(v) != "1" {
		t.Errorf("kv = %q", v)
	}
	if err := s.Commit(Change{ClearLockdown: true}); err != nil {
		t.Fatal(err)
	}
	if l, _ := s.Lockdown(); l != nil {
		t.Errorf("lockdown after clear: %+v", l)
	}
}

func TestSecondOpenIsRefused(t *testing.T) {
	path := filepath.Join(t.TempDir(), "store.db")
	s, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if s2, err := Open(path); err == nil {
		s2.Close()
		t.Fatal("a second Open of a store in use succeeded")
	} else if !strings.Contains(err.Error(), "another parryd") {
		t.Fatalf("error does not say what to check: %v", err)
	}
}
