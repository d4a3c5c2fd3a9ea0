package feed

import (
	"bytes"
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

var lim = Limits{MinPrefixV4: 8, MinPrefixV6: 32}

func strs(s *Set) []string {
	var out []string
	for p := range s.All() {
		out = append(out, p.String())
	}
	return out
}

func TestParseFormats(t *testing.T) {
	in := "; Spamhaus DROP List 2026/12/01\r\n" +
		"; https://www.spamhaus.org/drop/drop.txt\r\n" +
		"1.10.16.0/20 ; SBL256894\r\n" +
		"\r\n" +
		"#\n# firehol_level1 netset\n#\n" +
		"5.8.37.0/24\n" +
		"  203.0.113.7\t# trailing comment\n" +
		"198.51.100.77/24\n" + // not masked
		"::ffff:192.0.2.1\n" + // IPv4-mapped
		"::ffff:192.0.2.128/121\n" + // IPv4-mapped prefix
		"2001:db8:1::/48\n" +
		"2001:db8:1:2::/64\n" + // covered by the /48
		"5.8.37.0/24\n" + // duplicate
		"5.8.37.9\n" + // covered by 5.8.37.0/24
		"10.0.0.0/7\n" + // broader than /8
		"2001:db8::/16\n" + // broader than /32
		"not-an-ip\n" +
		"1.2.3.4 5.6.7.8\n" +
		"fe80::1%eth0\n" +
		"1.2.3.4/33\n" +
		"1.2.3.0-1.2.3.9\n" +
		"7.7.7.7" // no final newline
	s, rep, err := Parse(strings.NewReader(in), lim)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"1.10.16.0/20", "5.8.37.0/24", "7.7.7.7/32", "192.0.2.1/32", "192.0.2.128/25",
		"198.51.100.0/24", "203.0.113.7/32", "2001:db8:1::/48"}
	if d := cmp.Diff(want, strs(s)); d != "" {
		t.Errorf("entries (-want +got):\n%s", d)
	}
	wantRep := Report{Lines: 24, Data: 18, Entries: 8, Malformed: 5, TooBroad: 2, Duplicates: 1, Covered: 2}
	gotRep := rep
	gotRep.Bad = nil
	if d := cmp.Diff(wantRep, gotRep); d != "" {
		t.Errorf("report (-want +got):\n%s", d)
	}
	var lines []int
	for _, b := range rep.Bad {
		lines = append(lines, b.Line)
	}
	if d := cmp.Diff([]int{17, 18, 19, 20, 21, 22, 23}, lines); d != "" {
		t.Errorf("bad line numbers (-want +got):\n%s\n%+v", d, rep.Bad)
	}
}

func TestParseLongLine(t *testing.T) {
	in := "1.1.1.1\n" + strings.Repeat("9", 5*MaxLine) + "\n2.2.2.2\n" + strings.Repeat("x", 3*MaxLine)
	s, rep, err := Parse(strings.NewReader(in), lim)
	if err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff([]string{"1.1.1.1/32", "2.2.2.2/32"}, strs(s)); d != "" {
		t.Errorf("entries (-want +got):\n%s", d)
	}
	if rep.Malformed != 2 || rep.Lines != 4 || rep.Bad[0].Line != 2 || rep.Bad[1].Line != 4 || len(rep.Bad[0].Text) > 70 {
		t.Errorf("report %+v", rep)
	}
}

func TestParseMaxEntries(t *testing.T) {
	in := "1.1.1.1\n1.1.1.1\n2.2.2.2\n"
	if _, _, err := Parse(strings.NewReader(in), Limits{MinPrefixV4: 8, MaxEntries: 3}); err != nil {
		t.Errorf("3 of 3: %v", err)
	}
	if _, _, err := Parse(strings.NewReader(in+"3.3.3.3\n"), Limits{MinPrefixV4: 8, MaxEntries: 3}); !errors.Is(err, ErrTooMany) {
		t.Errorf("4 of 3: %v, want ErrTooMany", err)
	}
}

func TestParseGarbage(t *testing.T) {
	// A few bad lines among many good ones: accepted, counted.
	var b bytes.Buffer
	for i := range 200 {
		b.WriteString(netip.AddrFrom4([4]byte{10, 1, byte(i), 1}).String() + "\n")
	}
	for range 12 {
		b.WriteString("garbage\n")
	}
	if _, rep, err := Parse(&b, lim); err != nil || rep.Malformed != 12 || rep.Entries != 200 {
		t.Errorf("mostly good feed: %v %+v", err, rep)
	}
	for name, in := range map[string]string{
		"html":        "<html>\n<head><title>502 Bad Gateway</title></head>\n<body>\n<center><h1>502 Bad Gateway</h1></center>\n<hr><center>nginx</center>\n</body>\n</html>\n",
		"tiny":        "oops\n",
		"mostly junk": "1.2.3.4\n" + strings.Repeat("junk\n", 20),
	} {
		if _, _, err := Parse(strings.NewReader(in), lim); !errors.Is(err, ErrGarbage) {
			t.Errorf("%s: err %v, want ErrGarbage", name, err)
		}
	}
	// Only comments: an empty but valid feed.
	if s, _, err := Parse(strings.NewReader("# nothing listed today\n\n"), lim); err != nil || s.Len() != 0 {
		t.Errorf("comments only: %v %d", err, s.Len())
	}
}

func TestSetLookup(t *testing.T) {
	s, err := SetOf(netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("192.0.2.0/24"),
		netip.MustParsePrefix("203.0.113.7/32"), netip.MustParsePrefix("2001:db8::/32"), netip.MustParsePrefix("2001:db9::1/128"))
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ addr, want string }{
		{"10.255.255.255", "10.0.0.0/8"}, {"11.0.0.0", ""}, {"9.255.255.255", ""},
		{"192.0.2.200", "192.0.2.0/24"}, {"192.0.3.0", ""}, {"203.0.113.7", "203.0.113.7/32"},
		{"203.0.113.8", ""}, {"::ffff:10.1.2.3", "10.0.0.0/8"}, {"2001:db8:ffff::1", "2001:db8::/32"},
		{"2001:db9::1", "2001:db9::1/128"}, {"2001:db9::2", ""}, {"::1", ""},
	} {
		p, ok := s.Lookup(netip.MustParseAddr(c.addr))
		got := ""
		if ok {
			got = p.String()
		}
		if got != c.want {
			t.Errorf("Lookup(%s) = %q, want %q", c.addr, got, c.want)
		}
	}
}

func TestCompare(t *testing.T) {
	mk := func(ss ...string) *Set {
		var ps []netip.Prefix
		for _, s := range ss {
			ps = append(ps, netip.MustParsePrefix(s))
		}
		s, err := SetOf(ps...)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	old := mk("1.0.0.0/24", "2.0.0.0/24", "3.0.0.0/24", "2001:db8::/48", "2001:db9::/48")
	new := mk("2.0.0.0/24", "3.0.0.0/25", "4.0.0.0/24", "2001:db9::/48", "2001:dba::/48")
	d := Compare(old, new)
	for name, c := range map[string]struct {
		got  *Set
		want []string
	}{
		"added":   {d.Added, []string{"3.0.0.0/25", "4.0.0.0/24", "2001:dba::/48"}},
		"removed": {d.Removed, []string{"1.0.0.0/24", "3.0.0.0/24", "2001:db8::/48"}},
		"kept":    {d.Kept, []string{"2.0.0.0/24", "2001:db9::/48"}},
	} {
		if diff := cmp.Diff(c.want, strs(c.got)); diff != "" {
			t.Errorf("%s (-want +got):\n%s", name, diff)
		}
	}
	if !d.Changed() || Compare(new, new).Changed() {
		t.Error("Changed is wrong")
	}
}

func TestStateBinary(t *testing.T) {
	s, _, err := Parse(strings.NewReader("1.2.3.0/24\n9.9.9.9\n2001:db8::/32\n2001:db8:ffff::1\n"), Limits{MinPrefixV4: 8, MinPrefixV6: 16})
	if err != nil {
		t.Fatal(err)
	}
	st := &State{Source: "https://example.test/x", Set: s, ETag: `"abc"`, Size: 42, Sum: [32]byte{1, 2, 3}}
	b, err := st.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	var back State
	if err := back.UnmarshalBinary(b); err != nil {
		t.Fatal(err)
	}
	if back.Source != st.Source || back.ETag != st.ETag || back.Size != 42 || back.Sum != st.Sum ||
		!back.Success.IsZero() || cmp.Diff(strs(s), strs(back.Set)) != "" {
		t.Errorf("round trip: %+v", back)
	}
	// Every truncation and a flipped byte in the set are refused, not
	// mis-read.
	for i := range len(b) {
		if err := new(State).UnmarshalBinary(b[:i]); err == nil {
			t.Fatalf("truncated at %d accepted", i)
		}
	}
	bad := append([]byte(nil), b...)
	bad[len(bad)-1] = 200 // IPv6 prefix length 200
	if err := new(State).UnmarshalBinary(bad); err == nil {
		t.Error("prefix length 200 accepted")
	}
}
