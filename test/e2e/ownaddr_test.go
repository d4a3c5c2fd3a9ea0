package e2e

import (
	"strings"
	"testing"
	"time"

	"github.com/parryhq/parry/test/netns"
)

// TestOwnAddressFollowed: an address added to an interface while parryd
// runs is refused by the guard at once (not after the next 30 s poll),
// and blocks that covered it are taken out of it: a single-address block
// is removed, a CIDR keeps the rest of its range.
func TestOwnAddressFollowed(t *testing.T) {
	p := netns.NewPair(t)
	d := newDaemon(t, p.Host)
	d.start()
	d.mustParry("block", "198.18.5.5", "--for", "1h", "--reason", "single")
	d.mustParry("block", "203.0.113.0/30", "--for", "1h", "--reason", "range")

	p.Host.MustRun(t, "ip", "-6", "addr", "add", "2001:db8:77::5/64", "dev", p.HostIf, "nodad")
	p.Host.MustRun(t, "ip", "addr", "add", "198.18.5.5/32", "dev", p.HostIf)
	p.Host.MustRun(t, "ip", "addr", "add", "203.0.113.2/32", "dev", p.HostIf)
	// A block of the new address's /64, tried at once and until the
	// deadline: refused with the own-address code well within the old
	// 30 s poll.
	start := time.Now()
	var last string
	refused := netns.Poll(3*time.Second, 20*time.Millisecond, func() bool {
		_, errOut, code := d.parry("block", "2001:db8:77::/64", "--for", "1h")
		last = errOut
		if code == 0 {
			d.parry("unblock", "2001:db8:77::/64") // accepted in the instant before the event: tidy and retry
		}
		return code == 1 && strings.Contains(errOut, "own_address")
	})
	if !refused {
		t.Fatalf("a block of a /64 holding an address added a moment ago was not refused within 3 s (last: %q)", last)
	}
	t.Logf("refused %v after ip addr add", time.Since(start).Round(time.Millisecond))

	// The /30 minus .2 is 203.0.113.0/31 and 203.0.113.3.
	netns.Eventually(t, 3*time.Second, "blocks carved around the new addresses", func() bool {
		k := kernelElems(t, p.Host, d.table)
		_, single := k["198.18.5.5"]
		_, whole := k["203.0.113.0/30"]
		_, lo := k["203.0.113.0/31"]
		_, hi := k["203.0.113.3"]
		return !single && !whole && lo && hi
	})
	out := d.mustParry("list")
	if strings.Contains(out, "198.18.5.5") || strings.Contains(out, "203.0.113.0/30") || !strings.Contains(out, "203.0.113.0/31") {
		t.Errorf("list after the new addresses:\n%s", out)
	}
	if !strings.Contains(d.logs.String(), "own_address") {
		t.Errorf("the change was not audited/logged:\n%s", d.logs.String())
	}
}
