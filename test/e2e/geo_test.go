package e2e

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/parryhq/parry/agent/api"
	"github.com/parryhq/parry/agent/geoip/geoiptest"
	"github.com/parryhq/parry/test/daemon"
	"github.com/parryhq/parry/test/netns"
)

// Country and ASN blocks from generated .mmdb files: `block --country`
// drops the peer's IPv4 address (real packets) and blocks the rest of
// the country as one decision (a /12 cut into /16s for the guard's
// minimum prefix); an unknown country is an error;
// `block --asn` drops the peer's IPv6 address; list shows the country and
// the AS of each block, and the report those of the blocked sources.
func TestCountryAndASNBlocks(t *testing.T) {
	p := netns.NewPair(t)
	cdb := geoiptest.WriteDB(t, 6, []geoiptest.Rec{
		{Net: "192.0.2.2/32", Val: geoiptest.Country("XX")},
		{Net: "198.51.100.0/24", Val: geoiptest.Country("XX")},
		{Net: "10.0.0.0/12", Val: geoiptest.Country("XX")}, // broader than min_prefix_v4: cut into /16s
		{Net: "2001:db8::/64", Val: geoiptest.Country("YY")},
	})
	adb := geoiptest.WriteDB(t, 6, []geoiptest.Rec{
		{Net: "2001:db8::2/128", Val: geoiptest.ASN(64500, "Example Net")},
		{Net: "198.51.100.0/24", Val: geoiptest.ASN(64501, "Other")},
	})
	d := daemon.New(t, p.Host, daemon.Options{Config: quietConfig + "geoip:\n  country_db: " + cdb + "\n  asn_db: " + adb + "\n"})
	d.Start()
	if !p.Peer.Ping(p.HostV4) || !p.Peer.Ping(p.HostV6) {
		t.Fatal("peer cannot reach the host before any block")
	}

	out := d.MustParry("block", "--country", "xx", "--for", "12h")
	if !strings.Contains(out, "blocked 18 targets") {
		t.Errorf("block --country output: %q; want 1 address, 1 /24, 16 /16s", out)
	}
	if p.Peer.Ping(p.HostV4) {
		t.Fatal("the peer's address in country XX still reaches the host")
	}
	if !p.Peer.Ping(p.HostV6) {
		t.Fatal("the peer's IPv6 address (country YY) is dropped")
	}
	if _, stderr, code := d.Parry("block", "--country", "QQ"); code != 1 || !strings.Contains(stderr, "not in the database") {
		t.Errorf("unknown country: exit %d, %q", code, stderr)
	}
	d.MustParry("block", "--asn", "AS64500", "--for", "1d")
	if p.Peer.Ping(p.HostV6) {
		t.Fatal("the peer's IPv6 address in AS64500 still reaches the host")
	}

	var list struct {
		Blocks []api.BlockInfo `json:"blocks"`
	}
	if err := json.Unmarshal([]byte(d.MustParry("list", "--json")), &list); err != nil {
		t.Fatal(err)
	}
	got := map[string]api.BlockInfo{}
	for _, b := range list.Blocks {
		got[b.Target] = b
	}
	if b := got["198.51.100.0/24"]; b.Country != "XX" || b.ASN != 64501 || b.Reason != "country XX" {
		t.Errorf("list 198.51.100.0/24: %+v", b)
	}
	if b := got["2001:db8::2"]; b.Country != "YY" || b.ASN != 64500 || b.ASOrg != "Example Net" || b.Reason != "AS64500" {
		t.Errorf("list 2001:db8::2: %+v", b)
	}
	if _, ok := got["10.15.0.0/16"]; !ok || len(got) != 19 {
		t.Errorf("list: %d blocks (%v); want 19 with 10.0.0.0/12 as 16 /16s", len(got), got)
	}
	if txt := d.MustParry("list"); !strings.Contains(txt, "COUNTRY") || !strings.Contains(txt, "AS64500 Example Net") {
		t.Errorf("list:\n%s", txt)
	}
	// The report names the country and AS of the blocked sources.
	var rep struct {
		Sources []struct {
			Addr    string `json:"addr"`
			Country string `json:"country"`
			ASN     string `json:"asn"`
		} `json:"top_sources"`
	}
	if err := json.Unmarshal([]byte(d.MustParry("report", "--format", "json")), &rep); err != nil {
		t.Fatal(err)
	}
	found := false
	for _, s := range rep.Sources {
		if s.Addr == "10.0.0.0/16" { // the top sources: one block each, in address order
			found = s.Country == "XX"
		}
	}
	if !found {
		t.Errorf("report sources %+v: want 10.0.0.0/16 in XX", rep.Sources)
	}
	// One decision, one audit line for the whole country.
	if evs := d.AuditEvents("block"); len(evs) != 2 {
		t.Errorf("audit: %d block events, want 2 (country, ASN)", len(evs))
	}
}
