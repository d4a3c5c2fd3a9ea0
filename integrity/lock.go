package integrity

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"
)

// ErrBusy means the monitor could not be had within the caller's wait: a
// long scan holds it, or it is stuck. The wrapping error says what holds it
// and since when. Nothing was changed.
var ErrBusy = errors.New("integrity monitor busy")

// DefaultLockWait is how long a caller of a Monitor method waits for the
// monitor at most when its context allows longer (Options.LockWait).
const DefaultLockWait = 5 * time.Second

// opLock is the Monitor's lock: a mutex that can also be waited for with a
// deadline, and that remembers what holds it (for the busy error).
type opLock struct {
	ch     chan struct{} // cap 1: holding = a token inside
	holder atomic.Pointer[lockHolder]
}

type lockHolder struct {
	what  string
	since time.Time
}

func newOpLock() opLock { return opLock{ch: make(chan struct{}, 1)} }

// Lock waits for the lock without bound. Only the monitor's own goroutines
// (the watcher loop) use it; requests use LockContext.
func (l *opLock) Lock(what string) {
	l.ch <- struct{}{}
	l.holder.Store(&lockHolder{what: what, since: time.Now()})
}

// LockContext waits for the lock until ctx ends or wait passes, whichever
// is first; then it returns an error wrapping ErrBusy (and ctx's error if
// ctx ended).
func (l *opLock) LockContext(ctx context.Context, what string, wait time.Duration) error {
	select {
	case l.ch <- struct{}{}:
		l.holder.Store(&lockHolder{what: what, since: time.Now()})
		return nil
	default:
	}
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case l.ch <- struct{}{}:
		l.holder.Store(&lockHolder{what: what, since: time.Now()})
		return nil
	case <-ctx.Done():
		return fmt.Errorf("%s: %w (%s): %w", what, ErrBusy, l.describe(), ctx.Err())
	case <-t.C:
		return fmt.Errorf("%s: %w (%s); gave up after %s, try again later", what, ErrBusy, l.describe(), wait)
	}
}

func (l *opLock) describe() string {
	h := l.holder.Load()
	if h == nil {
		return "held"
	}
	return fmt.Sprintf("%s running for %s", h.what, time.Since(h.since).Round(time.Millisecond))
}

func (l *opLock) Unlock() {
	l.holder.Store(nil)
	<-l.ch
}
