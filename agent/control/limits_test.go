package control

import (
	"fmt"
	"slices"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/parryhq/parry/agent/api"
)

// TestConnSlotsKeepRoomForAdmins: unprivileged uids together never take
// the admin reserve, each uid but root is capped, and slots come back.
func TestConnSlotsKeepRoomForAdmins(t *testing.T) {
	s := newConnSlots(10)
	const perUID, reserve = 3, 4
	taken := 0
	for uid := uint32(1000); uid < 1010; uid++ { // ten users, three connections each
		for range perUID {
			if s.enterUID(uid, perUID) && s.take(false, reserve) {
				taken++
			}
		}
		if s.enterUID(uid, perUID) {
			t.Fatalf("uid %d got a connection over max_connections_per_uid", uid)
		}
	}
	if taken != 10-reserve {
		t.Fatalf("unprivileged peers took %d slots, want %d", taken, 10-reserve)
	}
	for i := range reserve {
		if !s.enterUID(0, perUID) || !s.take(true, reserve) {
			t.Fatalf("admin connection %d refused with %d slots held", i, s.total)
		}
	}
	if s.take(true, reserve) {
		t.Fatal("an admin got a slot over max_connections")
	}
	s.put()
	if s.take(false, reserve) {
		t.Fatal("a freed reserve slot went to an unprivileged peer")
	}
	if !s.take(true, reserve) {
		t.Fatal("a freed slot was not given back to an admin")
	}
	s.leaveUID(1000)
	if !s.enterUID(1000, perUID) {
		t.Fatal("uid 1000 did not get its per-uid slot back")
	}
}

// TestRefusalsAggregated: N refusals of one (uid, op) within an interval
// give one line at once and one summary with count N-1 when the interval
// ends; another pair is not held back; a quiet interval starts over.
func TestRefusalsAggregated(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var mu sync.Mutex
		var lines []map[string]any
		got := func() []map[string]any { mu.Lock(); defer mu.Unlock(); return slices.Clone(lines) }
		r := newRefusals(10*time.Second, time.Now, func(f map[string]any) { mu.Lock(); lines = append(lines, f); mu.Unlock() })
		refuse := func(uid uint32, op string) {
			r.note(uid, op, map[string]any{"op": op, "code": api.CodeForbidden, "sender": fmt.Sprintf("uid=%d", uid)})
		}
		const n = 14000
		for range n {
			refuse(1000, "status")
			time.Sleep(time.Millisecond / 4) // fake time: 3.5s of refusals
		}
		refuse(1001, "status")
		if l := got(); len(l) != 2 || l[0]["sender"] != "uid=1000" || l[1]["sender"] != "uid=1001" || l[0]["count"] != nil {
			t.Fatalf("before the interval ends: %v, want the first refusal of each uid", l)
		}
		time.Sleep(10 * time.Second)
		synctest.Wait()
		l := got()
		if len(l) != 3 || l[2]["count"] != n-1 || l[2]["op"] != "status" || l[2]["sender"] != "uid=1000" {
			t.Fatalf("after the interval: %v, want one summary with count %d", l, n-1)
		}
		if since, until := l[2]["since"].(time.Time), l[2]["until"].(time.Time); !until.After(since) {
			t.Fatalf("summary since %v until %v", since, until)
		}
		// Still refused in the next interval: counted again, written at close.
		refuse(1000, "status")
		refuse(1000, "status")
		r.close()
		if l := got(); len(l) != 4 || l[3]["count"] != 2 {
			t.Fatalf("at close: %v, want a summary with count 2", l[3:])
		}
		// A whole quiet interval: the next refusal is written at once again.
		r2 := newRefusals(10*time.Second, time.Now, func(f map[string]any) { mu.Lock(); lines = append(lines, f); mu.Unlock() })
		r2.note(7, "list", map[string]any{"op": "list"})
		time.Sleep(25 * time.Second)
		synctest.Wait()
		before := len(got())
		r2.note(7, "list", map[string]any{"op": "list"})
		if l := got(); len(l) != before+1 || l[len(l)-1]["count"] != nil {
			t.Fatalf("after a quiet interval: %v, want the refusal written at once", l[before:])
		}
		r2.close()
	})
}

func TestLogThrottle(t *testing.T) {
	l := &logThrottle{interval: 10 * time.Second}
	t0 := time.Unix(1000, 0)
	logged := 0
	for i := range 1000 {
		if n, ok := l.allow(t0.Add(time.Duration(i) * 15 * time.Millisecond)); ok { // 15 s of refusals
			logged++
			if logged == 2 && n != 667 {
				t.Fatalf("second line counts %d refusals, want 667 (those of the first 10 s after the first line)", n)
			}
		}
	}
	if logged != 2 {
		t.Fatalf("%d log lines for 15 s of refusals, want 2", logged)
	}
}
