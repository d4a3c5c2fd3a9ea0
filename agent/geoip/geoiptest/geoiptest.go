// Package geoiptest builds small .mmdb files for tests, with MaxMind's own
// writer (an implementation independent of the reader in agent/geoip).
// Only tests import it.
package geoiptest

import (
	"net"
	"os"
	"path/filepath"
	"testing"

	"github.com/maxmind/mmdbwriter"
	"github.com/maxmind/mmdbwriter/mmdbtype"
)

// Rec is one network of a test database and its record.
type Rec struct {
	Net string // CIDR
	Val mmdbtype.DataType
}

// WriteDB writes an .mmdb of recs (ipVersion 4 or 6) under t.TempDir and
// returns its path. IPv6 databases alias the IPv4 subtree at
// ::ffff:0:0/96, 2001::/32 and 2002::/16, as MaxMind's do.
func WriteDB(t testing.TB, ipVersion int, recs []Rec) string {
	t.Helper()
	tree, err := mmdbwriter.New(mmdbwriter.Options{
		DatabaseType: "Test-DB", IPVersion: ipVersion, IncludeReservedNetworks: true, RecordSize: 24,
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range recs {
		_, n, err := net.ParseCIDR(r.Net)
		if err != nil {
			t.Fatal(err)
		}
		if err := tree.Insert(n, r.Val); err != nil {
			t.Fatalf("insert %s: %v", r.Net, err)
		}
	}
	path := filepath.Join(t.TempDir(), "test.mmdb")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tree.WriteTo(f); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	return path
}

// Country is a Country database record.
func Country(code string) mmdbtype.Map {
	return mmdbtype.Map{"country": mmdbtype.Map{"iso_code": mmdbtype.String(code)}}
}

// ASN is an ASN database record.
func ASN(n uint32, org string) mmdbtype.Map {
	return mmdbtype.Map{"autonomous_system_number": mmdbtype.Uint32(n), "autonomous_system_organization": mmdbtype.String(org)}
}
