package feed

import (
	"bytes"
	"net/netip"
	"testing"
)

// FuzzParse: any input parses without panic into a set whose entries are
// masked, within the limits, in order and not nested, and whose encoding
// reads back the same.
func FuzzParse(f *testing.F) {
	for _, s := range []string{
		"1.2.3.0/24 ; SBL1\r\n# c\n\n::ffff:1.2.3.4\n2001:db8::/32\n",
		"1.2.3.4/33\nfe80::1%eth0\n1.2.3.0-1.2.3.9\n",
		"10.0.0.0/8\n10.1.0.0/16\n10.1.2.3\n10.0.0.0/8\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		s, rep, err := Parse(bytes.NewReader(in), Limits{MinPrefixV4: 8, MinPrefixV6: 16})
		if err != nil {
			return
		}
		if rep.Entries != s.Len() || rep.Malformed > rep.Data || rep.Data > rep.Lines {
			t.Fatalf("report %+v for %d entries", rep, s.Len())
		}
		var prev netip.Prefix
		for p := range s.All() {
			if p.Masked() != p || p.Addr().Is4In6() || (p.Addr().Is4() && p.Bits() < 8) || (p.Addr().Is6() && p.Bits() < 16) {
				t.Fatalf("entry %s", p)
			}
			if prev.IsValid() && prev.Addr().Is4() == p.Addr().Is4() && (prev.Overlaps(p) || prev.Addr().Compare(p.Addr()) >= 0) {
				t.Fatalf("%s then %s", prev, p)
			}
			if q, ok := s.Lookup(p.Addr()); !ok || q != p {
				t.Fatalf("Lookup(%s) = %s %v", p.Addr(), q, ok)
			}
			prev = p
		}
		b, _ := (&State{Set: s}).MarshalBinary()
		var back State
		if err := back.UnmarshalBinary(b); err != nil {
			t.Fatalf("decode: %v", err)
		}
		if back.Set.Len() != s.Len() || Compare(s, back.Set).Changed() {
			t.Fatal("round trip changed the set")
		}
	})
}

// FuzzState: no input makes UnmarshalBinary panic or accept a set that
// breaks the invariants.
func FuzzState(f *testing.F) {
	s, _, _ := Parse(bytes.NewReader([]byte("1.2.3.0/24\n9.9.9.9\n2001:db8::/32\n")), Limits{MinPrefixV4: 8, MinPrefixV6: 16})
	b, _ := (&State{Source: "x", ETag: "e", Set: s}).MarshalBinary()
	f.Add(b)
	f.Fuzz(func(t *testing.T, in []byte) {
		var st State
		if err := st.UnmarshalBinary(in); err != nil {
			return
		}
		var prev netip.Prefix
		for p := range st.Set.All() {
			if !p.IsValid() || p.Masked() != p {
				t.Fatalf("entry %s", p)
			}
			if prev.IsValid() && prev.Addr().Is4() == p.Addr().Is4() && prev.Overlaps(p) {
				t.Fatalf("%s then %s", prev, p)
			}
			prev = p
		}
	})
}
