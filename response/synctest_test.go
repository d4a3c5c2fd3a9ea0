package response

import (
	"testing"
	"testing/synctest"
	"time"
)

// TestWindowRealClock runs the engine on the real clock inside a synctest
// bubble: time.Sleep moves the fake time, so the window and the rate
// limiter see time pass exactly as in production, without waiting.
func TestWindowRealClock(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e, err := New(Config{Limits: Limits{SenderRate: 1, SenderBurst: 2}}, Options{})
		if err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		send := func() Result { return mustHandle(t, e, authFailure("203.0.113.7")) }
		for range 4 {
			send()
			time.Sleep(4*time.Minute + 59*time.Second)
		}
		// 4 signals at 0, 4:59, 9:58, 14:57; now 19:56: the first has left the window
		if r := send(); len(r.Decisions) != 0 {
			t.Fatalf("fired with the first signal out of the window at %s", time.Since(start))
		}
		if r := send(); len(r.Decisions) != 1 || time.Until(r.Decisions[0].Until) != time.Hour {
			t.Fatalf("fifth within the window: %+v", r.Decisions)
		}
		e.Admit(webapp)
		e.Admit(webapp)
		if e.Admit(webapp) == nil {
			t.Fatal("bucket of 2 admitted 3")
		}
		time.Sleep(time.Second)
		if err := e.Admit(webapp); err != nil {
			t.Fatalf("after 1s at 1/s: %v", err)
		}
	})
}
