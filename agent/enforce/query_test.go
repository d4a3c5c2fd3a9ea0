package enforce

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/parryhq/parry/response"
)

func targetsOf(t *testing.T, dp *Path, q Query) []string {
	t.Helper()
	bs, err := dp.Query(context.Background(), q)
	if err != nil {
		t.Fatal(err)
	}
	out := []string{}
	for _, b := range bs {
		out = append(out, b.Target)
	}
	return out
}

// list's filters and why: the blocks covering an address (a /24 and an
// address inside it, of two causes), by source, origin, reason, age and
// time left; why gives each decision with the signals that caused it.
func TestQueryAndWhy(t *testing.T) {
	k := &memKernel{m: map[netip.Prefix]bool{}}
	dp := newTestPath(t, k, time.Second)
	ctx := context.Background()
	now := time.Now()
	admin := response.Decision{Action: response.ActionBlock, Targets: mustPfx("198.51.100.0/24"), Until: now.Add(5 * time.Minute),
		Reason: "Port SCAN", Source: "cli", Admin: true}
	sig := response.Signal{Kind: "auth_failure", IP: netip.MustParseAddr("198.51.100.9"), User: "root", Source: "sshd"}
	pol := response.Decision{Action: response.ActionBlock, Targets: mustPfx("198.51.100.9/32"), Until: now.Add(2 * time.Hour),
		Reason: "5 auth failures", Source: "policy", Rule: "ssh", Cause: []response.Signal{sig}}
	remote := response.Decision{Action: response.ActionBlock, Targets: mustPfx("2001:db8::/64"), Source: "fleet", Origin: "web1", Reason: "from web1"}
	for _, d := range []response.Decision{admin, pol, remote} {
		if _, err := dp.Enforce(ctx, d); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := dp.ApplyFeed(ctx, FeedChange{Feed: "fh", Block: mustPfx("203.0.113.0/24"), Until: now.Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		q    Query
		want string
	}{
		{Query{Contains: netip.MustParseAddr("198.51.100.9")}, "[198.51.100.0/24 198.51.100.9]"},
		{Query{Contains: netip.MustParseAddr("198.51.100.10")}, "[198.51.100.0/24]"},
		{Query{Contains: netip.MustParseAddr("::ffff:198.51.100.9"), Source: "policy"}, "[198.51.100.9]"},
		{Query{Contains: netip.MustParseAddr("2001:db8::77")}, "[2001:db8::/64]"},
		{Query{Contains: netip.MustParseAddr("192.0.2.1")}, "[]"},
		{Query{Source: "feed:fh"}, "[203.0.113.0/24]"},
		{Query{Origin: "web1"}, "[2001:db8::/64]"},
		{Query{Origin: "local", Reason: "scan"}, "[198.51.100.0/24]"},
		{Query{Expiring: 10 * time.Minute}, "[198.51.100.0/24]"}, // the permanent one never matches
		{Query{Since: now.Add(time.Minute)}, "[]"},
		{Query{Since: now.Add(-time.Minute), Reason: "FAIL"}, "[198.51.100.9]"},
	} {
		if got := fmt.Sprint(targetsOf(t, dp, c.q)); got != c.want {
			t.Errorf("query %+v: %s, want %s", c.q, got, c.want)
		}
	}

	w, err := dp.Why(ctx, netip.MustParseAddr("198.51.100.9"))
	if err != nil {
		t.Fatal(err)
	}
	if len(w.Blocks) != 2 || w.Blocks[0].Target != "198.51.100.0/24" || !w.Blocks[0].Admin || w.Blocks[0].Cause != nil {
		t.Fatalf("why: %+v", w)
	}
	var cause []response.Signal
	b := w.Blocks[1]
	if err := json.Unmarshal(b.Cause, &cause); err != nil || len(cause) != 1 || cause[0].User != "root" || b.Rule != "ssh" || b.Source != "policy" || b.Decided.IsZero() {
		t.Errorf("why, the policy's block: %+v (cause %v, %v)", b, cause, err)
	}
}
