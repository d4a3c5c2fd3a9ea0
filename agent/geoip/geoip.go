// Package geoip answers two questions from MaxMind DB (.mmdb) files that
// the admin provides — GeoLite2/GeoIP2 Country or City, GeoLite2/GeoIP2
// ASN, DB-IP's lite country and ASN files, or any file with the same
// fields: which prefixes belong to a country or an autonomous system
// (for `parry block --country` and `--asn`), and which country and AS an
// address is in (for `list` and `report`). parry never downloads these
// files.
package geoip

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"syscall"

	"github.com/oschwald/maxminddb-golang/v2"
)

// Config is the `geoip:` section of parry.yaml.
type Config struct {
	CountryDB string `yaml:"country_db"` // path to a Country or City .mmdb
	ASNDB     string `yaml:"asn_db"`     // path to an ASN .mmdb
}

// MaxDBSize bounds a database file: it is read into memory whole (a file
// rewritten in place under a memory map would crash the daemon).
const MaxDBSize = 512 << 20

// Sentinels callers branch on (errors.Is).
var (
	ErrNoDB       = errors.New("no database configured for this lookup")
	ErrNotFound   = errors.New("no network in the database")
	ErrBadCountry = errors.New("country code must be two letters (ISO 3166-1 alpha-2)")
	ErrBadASN     = errors.New("ASN must be a number 1..4294967295, optionally with AS before it")
	ErrTooLarge   = errors.New("database file too large")
)

// DB holds the opened databases. It is safe for concurrent use and
// immutable: to follow a replaced file, Open a new DB and swap.
type DB struct {
	country, asn *maxminddb.Reader
}

// Validate checks the paths of a Config.
func (c Config) Validate() error {
	var errs []error
	for key, p := range map[string]string{"country_db": c.CountryDB, "asn_db": c.ASNDB} {
		if p != "" && !strings.HasPrefix(p, "/") {
			errs = append(errs, fmt.Errorf("geoip: %s: %q must be an absolute path", key, p))
		}
	}
	return errors.Join(errs...)
}

// Open reads the configured databases; an empty path leaves that lookup
// unavailable (ErrNoDB).
func Open(c Config) (*DB, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	d := &DB{}
	var err error
	if c.CountryDB != "" {
		if d.country, err = openDB(c.CountryDB); err != nil {
			return nil, fmt.Errorf("geoip: country_db: %w", err)
		}
	}
	if c.ASNDB != "" {
		if d.asn, err = openDB(c.ASNDB); err != nil {
			return nil, fmt.Errorf("geoip: asn_db: %w", err)
		}
	}
	return d, nil
}

func openDB(path string) (*maxminddb.Reader, error) {
	// O_NONBLOCK: a FIFO in its place must not hang the open.
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%s: not a regular file", path)
	}
	if fi.Size() > MaxDBSize {
		return nil, fmt.Errorf("%w: %s is %d bytes, over %d", ErrTooLarge, path, fi.Size(), MaxDBSize)
	}
	b, err := io.ReadAll(io.LimitReader(f, MaxDBSize+1))
	if err != nil {
		return nil, err
	}
	if len(b) > MaxDBSize {
		return nil, fmt.Errorf("%w: %s grew over %d", ErrTooLarge, path, MaxDBSize)
	}
	r, err := maxminddb.OpenBytes(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return r, nil
}

// HasCountry and HasASN say which lookups are available.
func (d *DB) HasCountry() bool { return d != nil && d.country != nil }
func (d *DB) HasASN() bool     { return d != nil && d.asn != nil }

// Info is what the databases know about one address; empty fields are
// unknown.
type Info struct {
	Country string `json:"country,omitempty"` // ISO 3166-1 alpha-2, upper case
	ASN     uint32 `json:"asn,omitempty"`
	ASOrg   string `json:"as_org,omitempty"`
}

type countryRecord struct {
	Country struct {
		ISOCode string `maxminddb:"iso_code"`
	} `maxminddb:"country"`
	Registered struct {
		ISOCode string `maxminddb:"iso_code"`
	} `maxminddb:"registered_country"`
}

// code is the country of a record: where the network is (country), else
// where it is registered (registered_country, e.g. for anycast ranges).
func (r countryRecord) code() string {
	if r.Country.ISOCode != "" {
		return strings.ToUpper(r.Country.ISOCode)
	}
	return strings.ToUpper(r.Registered.ISOCode)
}

type asnRecord struct {
	Number uint32 `maxminddb:"autonomous_system_number"`
	Org    string `maxminddb:"autonomous_system_organization"`
}

// Lookup returns what the databases know about a. Errors of a corrupt
// record leave the fields empty: a lookup for display never fails.
func (d *DB) Lookup(a netip.Addr) Info {
	var info Info
	if d == nil || !a.IsValid() {
		return info
	}
	a = a.Unmap()
	if d.country != nil {
		var r countryRecord
		if err := d.country.Lookup(a).Decode(&r); err == nil {
			info.Country = printable(r.code(), 2)
		}
	}
	if d.asn != nil {
		var r asnRecord
		if err := d.asn.Lookup(a).Decode(&r); err == nil {
			info.ASN, info.ASOrg = r.Number, printable(r.Org, 128)
		}
	}
	return info
}

// printable keeps s only if it is short printable ASCII (it comes from a
// file and reaches terminals).
func printable(s string, max int) string {
	if len(s) > max {
		s = s[:max]
	}
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] > 0x7e {
			return ""
		}
	}
	return s
}

// ParseCountry checks and upper-cases a country code ("de" → "DE").
func ParseCountry(s string) (string, error) {
	if len(s) != 2 || !isLetter(s[0]) || !isLetter(s[1]) {
		return "", fmt.Errorf("%w: %q", ErrBadCountry, s)
	}
	return strings.ToUpper(s), nil
}

func isLetter(c byte) bool { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') }

// ParseASN reads "64500", "AS64500" or "as64500".
func ParseASN(s string) (uint32, error) {
	t := s
	if len(t) > 2 && (t[:2] == "AS" || t[:2] == "as") {
		t = t[2:]
	}
	n, err := strconv.ParseUint(t, 10, 32)
	if err != nil || n == 0 || t[0] == '+' || t[0] == '0' {
		return 0, fmt.Errorf("%w: %q", ErrBadASN, s)
	}
	return uint32(n), nil
}

// Country returns the prefixes of a country, sorted (IPv4 first) and
// aggregated (sibling networks merged). It walks the whole search tree
// once, decoding each distinct data record once; ctx bounds the walk.
func (d *DB) Country(ctx context.Context, code string) ([]netip.Prefix, error) {
	code, err := ParseCountry(code)
	if err != nil {
		return nil, err
	}
	if !d.HasCountry() {
		return nil, fmt.Errorf("country %s: %w (geoip.country_db)", code, ErrNoDB)
	}
	ps, err := expand(ctx, d.country, func(res maxminddb.Result) (bool, error) {
		var r countryRecord
		if err := res.Decode(&r); err != nil {
			return false, err
		}
		return r.code() == code, nil
	})
	if err != nil {
		return nil, fmt.Errorf("country %s: %w", code, err)
	}
	return ps, nil
}

// ASN returns the prefixes of an autonomous system, as Country does.
func (d *DB) ASN(ctx context.Context, asn uint32) ([]netip.Prefix, error) {
	if asn == 0 {
		return nil, ErrBadASN
	}
	if !d.HasASN() {
		return nil, fmt.Errorf("AS%d: %w (geoip.asn_db)", asn, ErrNoDB)
	}
	ps, err := expand(ctx, d.asn, func(res maxminddb.Result) (bool, error) {
		var n uint32
		if err := res.DecodePath(&n, "autonomous_system_number"); err != nil {
			return false, err
		}
		return n == asn, nil
	})
	if err != nil {
		return nil, fmt.Errorf("AS%d: %w", asn, err)
	}
	return ps, nil
}

// expand collects the networks whose record matches. IPv4 networks come
// once, as IPv4 (the aliases of the IPv4 subtree in IPv6 databases —
// ::ffff:0:0/96, 2001::/32, 2002::/16 — are skipped).
func expand(ctx context.Context, r *maxminddb.Reader, match func(maxminddb.Result) (bool, error)) ([]netip.Prefix, error) {
	seen := make(map[uintptr]bool) // record offset → matches
	var out []netip.Prefix
	n := 0
	for res := range r.Networks() {
		if err := res.Err(); err != nil {
			return nil, err
		}
		if n++; n&4095 == 0 {
			if err := ctx.Err(); err != nil {
				return nil, err
			}
		}
		ok, known := seen[res.Offset()]
		if !known {
			var err error
			if ok, err = match(res); err != nil {
				return nil, fmt.Errorf("record at %s: %w", res.Prefix(), err)
			}
			seen[res.Offset()] = ok
		}
		if !ok {
			continue
		}
		p := res.Prefix()
		if a := p.Addr(); a.Is4In6() && p.Bits() >= 96 {
			p = netip.PrefixFrom(a.Unmap(), p.Bits()-96)
		}
		if p.IsValid() && p.Bits() > 0 {
			out = append(out, p.Masked())
		}
	}
	if len(out) == 0 {
		return nil, ErrNotFound
	}
	return Aggregate(out), nil
}

// Aggregate sorts prefixes (IPv4 first, by address, broader first),
// drops those inside another, and merges sibling pairs into their parent
// until none is left.
func Aggregate(ps []netip.Prefix) []netip.Prefix {
	slices.SortFunc(ps, func(a, b netip.Prefix) int {
		if a.Addr().Is4() != b.Addr().Is4() {
			if a.Addr().Is4() {
				return -1
			}
			return 1
		}
		if c := a.Addr().Compare(b.Addr()); c != 0 {
			return c
		}
		return a.Bits() - b.Bits()
	})
	out := ps[:0]
	for _, p := range ps {
		if n := len(out); n > 0 && out[n-1].Overlaps(p) && out[n-1].Bits() <= p.Bits() {
			continue // inside the previous one
		}
		out = append(out, p)
		for len(out) >= 2 {
			a, b := out[len(out)-2], out[len(out)-1]
			if a.Bits() != b.Bits() || a.Bits() == 0 {
				break
			}
			parent := netip.PrefixFrom(a.Addr(), a.Bits()-1).Masked()
			if parent.Addr() != a.Addr() || !parent.Contains(b.Addr()) || a.Addr().Is4() != b.Addr().Is4() {
				break
			}
			out = append(out[:len(out)-2], parent)
		}
	}
	return slices.Clip(out)
}
