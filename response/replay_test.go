package response

import (
	"testing"
	"time"
)

// TestReplay: signals read back after a restart rebuild the counts without
// deciding, so a burst split by the restart fires at its Nth signal; a
// burst that had fired before the restart is forgotten as it was then, and
// leaves no offence behind; a signal older than the window counts nothing.
func TestReplay(t *testing.T) {
	c := &clock{t: t0}
	e := newEngine(t, Config{}, c) // auth-failure: 5 per ip within 15m
	if w := e.LongestWindow("auth_failure"); w != 15*time.Minute {
		t.Fatalf("LongestWindow = %s, want 15m", w)
	}
	for i := range 3 {
		if err := e.Replay(authFailure("203.0.113.9"), t0.Add(-time.Duration(3-i)*time.Minute)); err != nil {
			t.Fatal(err)
		}
	}
	if r := mustHandle(t, e, authFailure("203.0.113.9")); len(r.Decisions) != 0 {
		t.Fatalf("4th failure decided: %+v", r)
	}
	if r := mustHandle(t, e, authFailure("203.0.113.9")); len(r.Decisions) != 1 {
		t.Fatalf("5th failure: %+v, want a block", r)
	}

	// A burst of 5 already decided before the restart: forgotten, no offence.
	for range 5 {
		if err := e.Replay(authFailure("203.0.113.10"), t0.Add(-time.Minute)); err != nil {
			t.Fatal(err)
		}
	}
	if _, ok := e.Offender(ip("203.0.113.10")); ok {
		t.Fatal("replay recorded an offence")
	}
	if r := mustHandle(t, e, authFailure("203.0.113.10")); len(r.Decisions) != 0 || r.Progress[0].Count != 1 {
		t.Fatalf("after a replayed decided burst: %+v, want count 1", r)
	}

	// Older than the window: not counted.
	for range 4 {
		if err := e.Replay(authFailure("203.0.113.11"), t0.Add(-16*time.Minute)); err != nil {
			t.Fatal(err)
		}
	}
	if r := mustHandle(t, e, authFailure("203.0.113.11")); r.Progress[0].Count != 1 {
		t.Fatalf("stale replay counted: %+v", r)
	}
}
