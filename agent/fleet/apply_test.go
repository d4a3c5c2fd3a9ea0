package fleet

import (
	"context"
	"fmt"
	"net/netip"
	"testing"
	"testing/synctest"
	"time"

	"github.com/parryhq/parry/response"
)

// TestApplyGroupMerges: consecutive entries of one decision become one
// remote decision (one commit in the agent); anything different, or a
// message that is not to be applied, ends the group; refusals are counted
// per target.
func TestApplyGroupMerges(t *testing.T) {
	until := time.Now().Add(time.Hour).UTC()
	rec := &recorder{allow: []netip.Prefix{netip.MustParsePrefix("198.51.100.7/32")}}
	f := &Fleet{apply: rec, log: testLogger(), seen: newIDSet(16)}
	var batch []inbound
	add := func(d response.Decision, origin string) {
		for _, e := range entries(d, origin, time.Now()) {
			batch = append(batch, inbound{apply: true, e: e})
		}
	}
	big := block("big", until, "198.51.100.1/32")
	for i := 2; i <= 10; i++ {
		big.Targets = append(big.Targets, netip.MustParsePrefix(fmt.Sprintf("198.51.100.%d/32", i)))
	}
	add(big, "a")                                              // 10 entries, one refused by the allowlist
	add(block("other", until, "203.0.113.1/32"), "a")          // another decision
	batch = append(batch, inbound{})                           // e.g. an echo
	add(block("big", until, "198.51.100.11/32"), "b")          // same id, other origin
	add(unblock("u", "203.0.113.2/32", "203.0.113.3/32"), "a") // 2 entries
	var sizes []int
	for rest := batch; len(rest) > 0; {
		n, _, _ := groupAt(rest)
		sizes = append(sizes, n)
		rest = rest[n:]
	}
	if fmt.Sprint(sizes) != "[10 1 1 1 2]" {
		t.Errorf("groups %v; want [10 1 1 1 2]", sizes)
	}
	f.applyBatch(context.Background(), batch)
	if fmt.Sprint(rec.batches) != "[4]" || rec.calls != 4 {
		t.Errorf("ApplyRemoteBatch calls with %v decisions, %d decisions; want [4] and 4", rec.batches, rec.calls)
	}
	if got := rec.all()[0]; got.ID != "big" || got.Origin != "a" || !got.Until.Equal(until) {
		t.Errorf("merged decision %+v; want id big from a until %v", got, until)
	}
	if a, r := f.applied.Load(), f.refused.Load(); a != 13 || r != 1 {
		t.Errorf("applied %d refused %d; want 13 and 1", a, r)
	}
}

// TestCollectGroupsABurst: what waits in the inbox is taken at once; in a
// burst, entries arriving shortly after join the batch; alone, the loop
// does not wait.
func TestCollectGroupsABurst(t *testing.T) {
	f := &Fleet{inbox: make(chan inbound, 8), now: time.Now}
	for range 3 {
		f.inbox <- inbound{seq: 1}
	}
	if got := f.collect(context.Background(), nil, false); len(got) != 3 {
		t.Fatalf("waiting entries: got %d; want 3", len(got))
	}
	// In a burst, entries that keep coming less than linger apart join;
	// a gap longer than linger ends the batch. (synctest: fake time.)
	synctest.Test(t, func(t *testing.T) {
		f := &Fleet{inbox: make(chan inbound, 8), now: time.Now}
		go func() {
			for _, wait := range []time.Duration{linger / 2, linger / 2, 3 * linger} {
				time.Sleep(wait)
				f.inbox <- inbound{seq: 2}
			}
		}()
		if got := f.collect(context.Background(), []inbound{{seq: 1}}, true); len(got) != 3 {
			t.Errorf("burst: got %d entries; want 3 (the first and two within linger)", len(got))
		}
		if got := f.collect(context.Background(), []inbound{{seq: 1}}, false); len(got) != 1 {
			t.Errorf("not a burst: got %d entries; want 1 (no waiting)", len(got))
		}
		<-f.inbox // the late one ends the goroutine
	})
}
