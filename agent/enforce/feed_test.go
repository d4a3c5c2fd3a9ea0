package enforce

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/parryhq/parry/agent/api"
	"github.com/parryhq/parry/firewall"
	"github.com/parryhq/parry/response"
)

// memKernel holds the kernel's blocks in a map; fail makes the next Block fail.
type memKernel struct {
	mu   sync.Mutex
	m    map[netip.Prefix]bool
	fail bool
}

func (k *memKernel) Block(es []firewall.Element) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.fail {
		k.fail = false
		return errors.New("injected")
	}
	for _, e := range es {
		k.m[e.Prefix] = true
	}
	return nil
}
func (k *memKernel) Apply(del, add []firewall.Element) error {
	k.mu.Lock()
	if !k.fail {
		for _, e := range del {
			delete(k.m, e.Prefix)
		}
	}
	k.mu.Unlock()
	return k.Block(add)
}
func (k *memKernel) AllElements() ([]firewall.Element, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	var out []firewall.Element
	for p := range k.m {
		out = append(out, firewall.Element{Prefix: p})
	}
	return out, nil
}
func (k *memKernel) Unblock(ps []netip.Prefix) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	for _, p := range ps {
		delete(k.m, p)
	}
	return nil
}
func (k *memKernel) SetAllow([]netip.Prefix) error    { return nil }
func (k *memKernel) Lockdown(firewall.Lockdown) error { return nil }
func (k *memKernel) Release() error                   { return nil }

// list is the kernel's elements, sorted, space-separated.
func (k *memKernel) list() string {
	k.mu.Lock()
	defer k.mu.Unlock()
	var ss []netip.Prefix
	for p := range k.m {
		ss = append(ss, p)
	}
	slices.SortFunc(ss, func(a, b netip.Prefix) int {
		if c := a.Addr().Compare(b.Addr()); c != 0 {
			return c
		}
		return a.Bits() - b.Bits()
	})
	var out []string
	for _, p := range ss {
		out = append(out, p.String())
	}
	return strings.Join(out, " ")
}

func (k *memKernel) has(p string) bool {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.m[netip.MustParsePrefix(p)]
}

func mustPfx(ss ...string) []netip.Prefix {
	var out []netip.Prefix
	for _, s := range ss {
		out = append(out, netip.MustParsePrefix(s))
	}
	return out
}

func sources(t *testing.T, dp *Path) map[string]string {
	t.Helper()
	bs, err := dp.Blocks(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]string{}
	for _, b := range bs {
		m[b.Target] = b.Source
	}
	return m
}

// A feed lifts only its own blocks: a removed entry blocked by the policy
// or an admin stays, and a feed never shortens a longer block.
func TestApplyFeedLiftsOnlyItsOwn(t *testing.T) {
	k := &memKernel{m: map[netip.Prefix]bool{}}
	dp := newTestPath(t, k, time.Second)
	ctx := context.Background()
	pol := response.Decision{Action: response.ActionBlock, Targets: mustPfx("203.0.113.5/32"), Until: time.Now().Add(10 * time.Hour), Source: "policy"}
	if _, err := dp.Enforce(ctx, pol); err != nil {
		t.Fatal(err)
	}
	until := time.Now().Add(time.Hour)
	out, err := dp.ApplyFeed(ctx, FeedChange{Feed: "a", Block: mustPfx("203.0.113.5/32", "198.51.100.0/24", "192.0.2.7/32"), Until: until,
		KV: map[string][]byte{"feed/a": []byte("s1")}})
	if err != nil {
		t.Fatal(err)
	}
	if out.Added != 2 || out.Kept != 1 {
		t.Errorf("first apply %+v: want 2 added, the policy's longer block kept", out)
	}
	if got, _ := dp.store.Get("feed/a"); string(got) != "s1" {
		t.Errorf("feed state %q, want stored with the blocks", got)
	}
	out, err = dp.ApplyFeed(ctx, FeedChange{Feed: "a", Block: mustPfx("198.51.100.0/24"), Lift: mustPfx("203.0.113.5/32", "192.0.2.7/32"), Until: until.Add(time.Minute)})
	if err != nil {
		t.Fatal(err)
	}
	if out.Lifted != 1 || out.Others != 1 || out.Renewed != 1 {
		t.Errorf("second apply %+v: want 1 lifted, 1 left to the policy, 1 renewed", out)
	}
	src := sources(t, dp)
	if src["203.0.113.5"] != "policy" || src["198.51.100.0/24"] != "feed:a" || src["192.0.2.7"] != "" {
		t.Errorf("blocks after the refresh: %v", src)
	}
	if !k.has("203.0.113.5/32") || k.has("192.0.2.7/32") {
		t.Errorf("kernel: %v", k.m)
	}
	// Another feed's removal does not lift feed a's block.
	if out, _ := dp.ApplyFeed(ctx, FeedChange{Feed: "b", Lift: mustPfx("198.51.100.0/24")}); out.Lifted != 0 || out.Others != 1 {
		t.Errorf("feed b lifting feed a's block: %+v", out)
	}
}

// A refresh whose kernel write fails changes nothing: no block, the old
// feed state, the lifted block still there.
func TestApplyFeedFailureChangesNothing(t *testing.T) {
	k := &memKernel{m: map[netip.Prefix]bool{}}
	dp := newTestPath(t, k, time.Second)
	ctx := context.Background()
	until := time.Now().Add(time.Hour)
	if _, err := dp.ApplyFeed(ctx, FeedChange{Feed: "a", Block: mustPfx("192.0.2.7/32"), Until: until, KV: map[string][]byte{"feed/a": []byte("s1")}}); err != nil {
		t.Fatal(err)
	}
	k.fail = true
	_, err := dp.ApplyFeed(ctx, FeedChange{Feed: "a", Block: mustPfx("198.51.100.0/24"), Lift: mustPfx("192.0.2.7/32"), Until: until,
		KV: map[string][]byte{"feed/a": []byte("s2")}})
	if api.CodeOf(err) != api.CodeFirewall {
		t.Fatalf("apply with a failing kernel: %v, want %s", err, api.CodeFirewall)
	}
	if got, _ := dp.store.Get("feed/a"); string(got) != "s1" {
		t.Errorf("feed state %q after a failed apply, want the old one", got)
	}
	src := sources(t, dp)
	if len(src) != 1 || src["192.0.2.7"] != "feed:a" || !k.has("192.0.2.7/32") || k.has("198.51.100.0/24") {
		t.Errorf("after a failed apply: blocks %v kernel %v", src, k.m)
	}
}

// A feed replacing an entry by one of another length in one refresh; an
// entry inside another cause's CIDR is a record of its own (the kernel
// holds their union: the admin's longer /24).
func TestApplyFeedReplacesPrefix(t *testing.T) {
	k := &memKernel{m: map[netip.Prefix]bool{}}
	dp := newTestPath(t, k, time.Second)
	ctx := context.Background()
	until := time.Now().Add(time.Hour)
	if _, err := dp.ApplyFeed(ctx, FeedChange{Feed: "a", Block: mustPfx("198.51.100.0/24"), Until: until}); err != nil {
		t.Fatal(err)
	}
	if _, err := dp.Enforce(ctx, blockOf("203.0.113.0/24")); err != nil {
		t.Fatal(err)
	}
	out, err := dp.ApplyFeed(ctx, FeedChange{Feed: "a", Block: mustPfx("198.51.0.0/16", "203.0.113.0/25"), Lift: mustPfx("198.51.100.0/24"), Until: until})
	if err != nil {
		t.Fatal(err)
	}
	if out.Added != 2 || out.Lifted != 1 || out.RefusedTotal() != 0 {
		t.Errorf("replace: %+v; want the /16 and the /25 added, the /24 lifted", out)
	}
	if want := "198.51.0.0/16 203.0.113.0/24"; k.list() != want {
		t.Errorf("kernel %q, want %q", k.list(), want)
	}
}

// A feed's /8 with an allowlisted /24 inside: the kernel gets the /8
// minus the /24 (16 pieces), marked as the feed's; removing the entry
// lifts them all; an allowlist that grows under a kept entry replaces its
// whole block by the pieces at the next refresh.
func TestApplyFeedCarvesTheAllowlist(t *testing.T) {
	k := &memKernel{m: map[netip.Prefix]bool{}}
	dp := newTestPath(t, k, time.Second)
	ctx := context.Background()
	until := time.Now().Add(time.Hour)
	if _, _, err := dp.Configure(ctx, GuardConfig{Allow: mustPfx("10.9.9.0/24"), MinV4: 16, MinV6: 32}); err != nil {
		t.Fatal(err)
	}
	out, err := dp.ApplyFeed(ctx, FeedChange{Feed: "a", Block: mustPfx("10.0.0.0/8", "192.0.2.0/24"), Until: until})
	if err != nil {
		t.Fatal(err)
	}
	if out.Carved != 1 || out.Added != 17 || out.RefusedTotal() != 0 {
		t.Errorf("carved apply: %+v; want the /8 carved into 16 pieces, the /24 whole", out)
	}
	if !k.has("10.9.8.0/24") || !k.has("10.128.0.0/9") || k.has("10.9.9.0/24") || k.has("10.0.0.0/8") {
		t.Errorf("kernel %v: want the /8 minus 10.9.9.0/24", k.m)
	}
	// Renewed: the same pieces.
	if out, err := dp.ApplyFeed(ctx, FeedChange{Feed: "a", Block: mustPfx("10.0.0.0/8", "192.0.2.0/24"), Until: until.Add(time.Minute)}); err != nil || out.Renewed != 17 {
		t.Errorf("renewal of a carved entry: %+v %v", out, err)
	}
	// The allowlist grows inside the kept 192.0.2.0/24.
	if _, _, err := dp.Configure(ctx, GuardConfig{Allow: mustPfx("10.9.9.0/24", "192.0.2.128/25"), MinV4: 16, MinV6: 32}); err != nil {
		t.Fatal(err)
	}
	out, err = dp.ApplyFeed(ctx, FeedChange{Feed: "a", Block: mustPfx("10.0.0.0/8", "192.0.2.0/24"), Until: until.Add(2 * time.Minute)})
	if err != nil || out.Lifted != 1 || out.Added != 1 || out.Carved != 2 {
		t.Errorf("after the allowlist grew: %+v %v; want the /24 lifted and its half added", out, err)
	}
	if !k.has("192.0.2.0/25") || k.has("192.0.2.0/24") {
		t.Errorf("kernel %v", k.m)
	}
	out, err = dp.ApplyFeed(ctx, FeedChange{Feed: "a", Lift: mustPfx("10.0.0.0/8", "192.0.2.0/24")})
	if err != nil || out.Lifted != 17 || len(k.m) != 0 {
		t.Errorf("removing the carved entries: %+v %v, kernel %v", out, err, k.m)
	}
}
