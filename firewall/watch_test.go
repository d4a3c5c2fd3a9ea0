package firewall_test

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"github.com/parryhq/parry/firewall"
	"github.com/parryhq/parry/test/netns"
)

// startWatch runs Watch until the test ends and returns the channel its
// changed callback signals on.
func startWatch(t *testing.T, f *firewall.NFT) <-chan struct{} {
	t.Helper()
	fired, _ := startWatch2(t, f)
	return fired
}

// startWatch2 runs Watch until the test ends and returns the channels its
// changed and foreign callbacks signal on.
func startWatch2(t *testing.T, f *firewall.NFT) (changed, foreign <-chan struct{}) {
	t.Helper()
	fired, other := make(chan struct{}, 1), make(chan struct{}, 1)
	notify := func(c chan struct{}) func() {
		return func() {
			select {
			case c <- struct{}{}:
			default:
			}
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- f.Watch(ctx, notify(fired), notify(other))
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Watch: %v", err)
		}
	})
	return fired, other
}

func expectFired(t *testing.T, fired <-chan struct{}, within time.Duration, what string) {
	t.Helper()
	select {
	case <-fired:
	case <-time.After(within):
		t.Fatalf("Watch did not notice %s within %v", what, within)
	}
}

func expectQuiet(t *testing.T, fired <-chan struct{}, wait time.Duration, what string) {
	t.Helper()
	select {
	case <-fired:
		t.Fatalf("Watch fired on %s", what)
	case <-time.After(wait):
	}
}

func TestWatchNoticesForeignChanges(t *testing.T) {
	ns := netns.New(t)
	f := newFirewall(t, ns)
	fired := startWatch(t, f)
	// Our own changes, and other tables' changes, do not fire.
	if err := f.Block([]firewall.Element{{Prefix: pfx("203.0.113.7/32"), Timeout: time.Hour}, {Prefix: pfx("198.51.100.0/24")}}); err != nil {
		t.Fatal(err)
	}
	if err := f.Unblock([]netip.Prefix{pfx("203.0.113.7/32")}); err != nil {
		t.Fatal(err)
	}
	if err := f.Lockdown(firewall.Lockdown{Timeout: time.Hour, Isolate: true}); err != nil {
		t.Fatal(err)
	}
	if err := f.Release(); err != nil {
		t.Fatal(err)
	}
	if err := f.SetAllow([]netip.Prefix{pfx("192.0.2.0/24")}); err != nil {
		t.Fatal(err)
	}
	if err := f.Ensure(); err != nil {
		t.Fatal(err)
	}
	ns.MustRun(t, "nft", "add", "table", "ip", "someoneelse")
	expectQuiet(t, fired, time.Second, "our own changes or another table's")

	for _, tc := range []struct {
		what string
		cmd  []string
	}{
		{"nft flush ruleset", []string{"flush", "ruleset"}},
		{"nft delete table", []string{"delete", "table", "inet", f.Table()}},
		{"a foreign rule in our chain", []string{"insert", "rule", "inet", f.Table(), "input", "accept"}},
		{"nft flush table", []string{"flush", "table", "inet", f.Table()}},
	} {
		ns.MustRun(t, "nft", tc.cmd...)
		expectFired(t, fired, 2*time.Second, tc.what)
		// What the agent does: Ensure, then re-assert.
		if err := f.Ensure(); err != nil {
			t.Fatal(err)
		}
		if err := f.Block([]firewall.Element{{Prefix: pfx("198.51.100.0/24")}}); err != nil {
			t.Fatal(err)
		}
		expectQuiet(t, fired, 600*time.Millisecond, "the re-assertion after "+tc.what)
	}
}

func TestWatchFiresAtStartWhenMissing(t *testing.T) {
	ns := netns.New(t)
	f := newUnensured(t, ns)
	fired := startWatch(t, f)
	expectFired(t, fired, 2*time.Second, "a missing table at start")
}

// TestWatchNoticesForeignElementChanges: a foreign `nft delete element` or
// `nft flush set` leaves the structure intact and fires foreign (not
// changed); our own changes, including many in a row, fire neither.
func TestWatchNoticesForeignElementChanges(t *testing.T) {
	ns := netns.New(t)
	f := newFirewall(t, ns)
	changed, foreign := startWatch2(t, f)
	blocks := []firewall.Element{{Prefix: pfx("203.0.113.8/32"), Timeout: time.Hour}, {Prefix: pfx("198.51.100.0/24")}}
	for i := 0; i < 20; i++ {
		if err := f.Block(blocks); err != nil {
			t.Fatal(err)
		}
		if err := f.Unblock([]netip.Prefix{pfx("203.0.113.9/32")}); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Lockdown(firewall.Lockdown{Timeout: time.Hour}); err != nil {
		t.Fatal(err)
	}
	if err := f.Release(); err != nil {
		t.Fatal(err)
	}
	if err := f.SetAllow([]netip.Prefix{pfx("192.0.2.0/24")}); err != nil {
		t.Fatal(err)
	}
	expectQuiet(t, foreign, time.Second, "our own Block/Unblock/Lockdown/Release/SetAllow")

	for _, tc := range []struct {
		what string
		cmd  []string
	}{
		{"nft delete element", []string{"delete", "element", "inet", f.Table(), "block4", "{ 203.0.113.8 }"}},
		{"nft flush set", []string{"flush", "set", "inet", f.Table(), "block4net"}},
	} {
		ns.MustRun(t, "nft", tc.cmd...)
		expectFired(t, foreign, 5*time.Second, tc.what)
		if err := f.Block(blocks); err != nil { // what the agent does
			t.Fatal(err)
		}
		expectQuiet(t, foreign, 600*time.Millisecond, "the re-assertion after "+tc.what)
		select {
		case <-changed:
			t.Fatalf("changed fired on %s (structure intact)", tc.what)
		default:
		}
	}
}
