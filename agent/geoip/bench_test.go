package geoip

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"runtime"
	"testing"
)

// bigCountryDB has n /24s from 11.0.0.0 on, every fourth one XX (none
// adjacent, so none merge), the others split between YY and ZZ, and as
// many IPv6 /48s the same way.
func bigCountryDB(t testing.TB, n int) string {
	recs := make([]rec, 0, 2*n)
	codes := []string{"XX", "YY", "ZZ", "YY"}
	for i := range n {
		recs = append(recs, rec{fmt.Sprintf("%d.%d.%d.0/24", 11+i>>16, (i>>8)&0xff, i&0xff), country(codes[i%4])})
		recs = append(recs, rec{fmt.Sprintf("2a00:%x:%x::/48", i>>16, i&0xffff), country(codes[i%4])})
	}
	return writeDB(t, 6, recs)
}

func TestCountryCanceled(t *testing.T) {
	d := open(t, Config{CountryDB: bigCountryDB(t, 10_000)})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := d.Country(ctx, "XX"); !errors.Is(err, context.Canceled) {
		t.Errorf("canceled walk: %v", err)
	}
	got, err := d.Country(context.Background(), "XX")
	if err != nil || len(got) != 5000 {
		t.Errorf("XX: %d networks, %v", len(got), err)
	}
}

// BenchmarkCountry10k expands a country of 10,000 networks (5,000 IPv4
// /24s and 5,000 IPv6 /48s) out of a 40,000-network database.
func BenchmarkCountry10k(b *testing.B) {
	d, err := Open(Config{CountryDB: bigCountryDB(b, 20_000)})
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	var n int
	for b.Loop() {
		ps, err := d.Country(context.Background(), "XX")
		if err != nil {
			b.Fatal(err)
		}
		n = len(ps)
	}
	b.ReportMetric(float64(n), "networks")
	runtime.KeepAlive(d)
}

func BenchmarkLookup(b *testing.B) {
	d, err := Open(Config{CountryDB: bigCountryDB(b, 20_000)})
	if err != nil {
		b.Fatal(err)
	}
	a := netip.MustParseAddr("11.0.77.9")
	b.ReportAllocs()
	for b.Loop() {
		if d.Lookup(a).Country == "" {
			b.Fatal("not found")
		}
	}
}
