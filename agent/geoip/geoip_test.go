package geoip

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/maxmind/mmdbwriter/mmdbtype"
	"github.com/oschwald/maxminddb-golang/v2"
	"github.com/parryhq/parry/agent/geoip/geoiptest"
)

type rec struct {
	net string
	val mmdbtype.DataType
}

// writeDB builds an .mmdb with MaxMind's own writer (geoiptest.WriteDB).
func writeDB(t testing.TB, ipVersion int, recs []rec) string {
	t.Helper()
	rs := make([]geoiptest.Rec, len(recs))
	for i, r := range recs {
		rs[i] = geoiptest.Rec{Net: r.net, Val: r.val}
	}
	return geoiptest.WriteDB(t, ipVersion, rs)
}

func country(code string) mmdbtype.Map {
	return mmdbtype.Map{"country": mmdbtype.Map{"iso_code": mmdbtype.String(code)}}
}

func asn(n uint32, org string) mmdbtype.Map {
	return mmdbtype.Map{"autonomous_system_number": mmdbtype.Uint32(n), "autonomous_system_organization": mmdbtype.String(org)}
}

func countryRecs() []rec {
	return []rec{
		{"203.0.113.0/25", country("XX")},
		{"203.0.113.128/25", country("XX")},
		{"198.51.100.0/24", mmdbtype.Map{"country": mmdbtype.Map{"iso_code": mmdbtype.String("XX")}, "is_in_european_union": mmdbtype.Bool(true)}},
		{"192.0.2.0/24", country("YY")},
		{"192.0.2.64/26", country("XX")}, // replaces part of YY's /24
		{"2001:db8:1::/48", country("XX")},
		{"2001:db8:2::/48", country("YY")},
		{"100.64.0.0/10", mmdbtype.Map{"registered_country": mmdbtype.Map{"iso_code": mmdbtype.String("ZZ")}}},
	}
}

func open(t *testing.T, c Config) *DB {
	t.Helper()
	d, err := Open(c)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func strs(ps []netip.Prefix) []string {
	var out []string
	for _, p := range ps {
		out = append(out, p.String())
	}
	return out
}

func TestCountryExpand(t *testing.T) {
	d := open(t, Config{CountryDB: writeDB(t, 6, countryRecs())})
	ctx := context.Background()
	for _, c := range []struct {
		code string
		want []string
	}{
		// IPv4 networks come once, as IPv4: not again as ::ffff:a.b.c.d/120
		// nor under 2002::/16; the two /25s merge into their /24.
		{"XX", []string{"192.0.2.64/26", "198.51.100.0/24", "203.0.113.0/24", "2001:db8:1::/48"}},
		{"yy", []string{"192.0.2.0/26", "192.0.2.128/25", "2001:db8:2::/48"}},
		{"ZZ", []string{"100.64.0.0/10"}}, // registered_country when country is absent
	} {
		got, err := d.Country(ctx, c.code)
		if err != nil {
			t.Fatalf("%s: %v", c.code, err)
		}
		if diff := cmp.Diff(c.want, strs(got)); diff != "" {
			t.Errorf("%s (-want +got):\n%s", c.code, diff)
		}
	}
	// The fixture does alias the IPv4 subtree: a raw walk with aliases
	// sees XX's networks again under ::ffff:0:0/96 and 2002::/16, and a
	// mapped address resolves through the alias.
	aliased := map[string]bool{}
	for res := range d.country.Networks(maxminddb.IncludeAliasedNetworks()) {
		for _, a := range []string{"::ffff:0:0/96", "2002::/16"} {
			if netip.MustParsePrefix(a).Contains(res.Prefix().Addr()) {
				aliased[a] = true
			}
		}
	}
	if len(aliased) != 2 {
		t.Errorf("fixture without IPv4 aliases: %v", aliased)
	}
	var r countryRecord
	if err := d.country.Lookup(netip.MustParseAddr("::ffff:203.0.113.5")).Decode(&r); err != nil || r.code() != "XX" {
		t.Errorf("mapped address through the alias: %q %v", r.code(), err)
	}
	if _, err := d.Country(ctx, "QQ"); !errors.Is(err, ErrNotFound) {
		t.Errorf("unknown country: %v", err)
	}
	for _, bad := range []string{"", "X", "XXX", "1A", "É"} {
		if _, err := d.Country(ctx, bad); !errors.Is(err, ErrBadCountry) {
			t.Errorf("%q: %v", bad, err)
		}
	}
	if _, err := d.ASN(ctx, 64500); !errors.Is(err, ErrNoDB) {
		t.Errorf("ASN without asn_db: %v", err)
	}
}

func TestASNExpandAndLookup(t *testing.T) {
	d := open(t, Config{
		CountryDB: writeDB(t, 6, countryRecs()),
		ASNDB: writeDB(t, 6, []rec{
			{"203.0.113.0/24", asn(64500, "Example Net")},
			{"2001:db8:1::/48", asn(64500, "Example Net")},
			{"192.0.2.0/24", asn(64501, "Evil\x1b[31m Corp")},
		}),
	})
	n, err := ParseASN("AS64500")
	if err != nil {
		t.Fatal(err)
	}
	got, err := d.ASN(context.Background(), n)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"203.0.113.0/24", "2001:db8:1::/48"}, strs(got)); diff != "" {
		t.Errorf("AS64500 (-want +got):\n%s", diff)
	}
	if _, err := d.ASN(context.Background(), 64999); !errors.Is(err, ErrNotFound) {
		t.Errorf("unknown ASN: %v", err)
	}
	for _, c := range []struct {
		addr string
		want Info
	}{
		{"203.0.113.200", Info{Country: "XX", ASN: 64500, ASOrg: "Example Net"}},
		{"::ffff:203.0.113.5", Info{Country: "XX", ASN: 64500, ASOrg: "Example Net"}},
		{"2001:db8:1::9", Info{Country: "XX", ASN: 64500, ASOrg: "Example Net"}},
		{"2001:db8:2::1", Info{Country: "YY"}},
		{"192.0.2.70", Info{Country: "XX", ASN: 64501}}, // control characters in the org: dropped
		{"192.0.2.1", Info{Country: "YY", ASN: 64501}},
		{"100.64.1.1", Info{Country: "ZZ"}},
		{"8.8.8.8", Info{}},
	} {
		if got := d.Lookup(netip.MustParseAddr(c.addr)); got != c.want {
			t.Errorf("Lookup(%s) = %+v, want %+v", c.addr, got, c.want)
		}
	}
}

func TestIPv4OnlyDB(t *testing.T) {
	d := open(t, Config{CountryDB: writeDB(t, 4, []rec{
		{"10.0.0.0/9", country("XX")}, {"10.128.0.0/9", country("XX")}, {"11.0.0.0/8", country("YY")},
	})})
	got, err := d.Country(context.Background(), "XX")
	if err != nil || cmp.Diff([]string{"10.0.0.0/8"}, strs(got)) != "" {
		t.Errorf("XX: %v %v", strs(got), err)
	}
	if got := d.Lookup(netip.MustParseAddr("2001:db8::1")); got != (Info{}) {
		t.Errorf("IPv6 in an IPv4 database: %+v", got)
	}
	if got := d.Lookup(netip.MustParseAddr("10.200.0.1")); got.Country != "XX" {
		t.Errorf("10.200.0.1: %+v", got)
	}
}

func TestOpenErrors(t *testing.T) {
	dir := t.TempDir()
	junk := filepath.Join(dir, "junk.mmdb")
	os.WriteFile(junk, []byte("not a database at all"), 0o600)
	good := writeDB(t, 6, countryRecs())
	b, _ := os.ReadFile(good)
	trunc := filepath.Join(dir, "trunc.mmdb")
	os.WriteFile(trunc, b[:len(b)/2], 0o600)
	for name, c := range map[string]Config{
		"missing":  {CountryDB: filepath.Join(dir, "none.mmdb")},
		"junk":     {CountryDB: junk},
		"trunc":    {ASNDB: trunc},
		"relative": {CountryDB: "country.mmdb"},
		"dir":      {CountryDB: dir},
	} {
		if _, err := Open(c); err == nil {
			t.Errorf("%s: opened", name)
		}
	}
	d := open(t, Config{})
	if d.HasCountry() || d.HasASN() || d.Lookup(netip.MustParseAddr("1.2.3.4")) != (Info{}) {
		t.Error("empty config must give an empty DB")
	}
	if _, err := d.Country(context.Background(), "XX"); !errors.Is(err, ErrNoDB) {
		t.Errorf("no country_db: %v", err)
	}
}

func TestParseASN(t *testing.T) {
	for s, want := range map[string]uint32{"64500": 64500, "AS64500": 64500, "as1": 1, "4294967295": 4294967295} {
		if got, err := ParseASN(s); err != nil || got != want {
			t.Errorf("%q: %d %v", s, got, err)
		}
	}
	for _, s := range []string{"", "AS", "0", "AS0", "4294967296", "-1", "+5", "064500", "AS 1", "1e3"} {
		if _, err := ParseASN(s); !errors.Is(err, ErrBadASN) {
			t.Errorf("%q accepted", s)
		}
	}
}

func TestAggregate(t *testing.T) {
	var in []netip.Prefix
	for _, s := range []string{"10.0.0.0/25", "10.0.0.128/25", "10.0.1.0/24", "10.0.0.5/32", "10.0.3.0/24", "::/1", "8000::/1", "10.0.2.0/24"} {
		in = append(in, netip.MustParsePrefix(s))
	}
	// 10.0.0.0/23 + 10.0.2.0/23 → 10.0.0.0/22; ::/1 + 8000::/1 is ::/0.
	if diff := cmp.Diff([]string{"10.0.0.0/22", "::/0"}, strs(Aggregate(in))); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
}
