package enforce

import (
	"context"
	"fmt"
	"time"

	"github.com/parryhq/parry/agent/api"
)

// DefaultLockWait is how long a decision waits for the path by default
// (Options.LockWait): another change (a 100,000-target block, a full
// re-assert) holds it for a few seconds at most; a path held longer is
// stuck (a kernel or disk that does not answer), and the decision is
// answered busy instead of waiting without bound.
const DefaultLockWait = 30 * time.Second

// pathLock is the path's mutex; a decision's wait for it can end with its
// context or its bound.
type pathLock struct{ ch chan struct{} }

func newPathLock() pathLock { return pathLock{ch: make(chan struct{}, 1)} }

func (l pathLock) Lock()   { l.ch <- struct{}{} }
func (l pathLock) Unlock() { <-l.ch }

// lockWithin takes the lock, waiting until ctx ends or wait has passed: a
// CodeBusy *api.Error then, or ctx's error.
func (l pathLock) lockWithin(ctx context.Context, wait time.Duration) error {
	select {
	case l.ch <- struct{}{}:
		return nil
	default:
	}
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case l.ch <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return &api.Error{Code: api.CodeBusy, Message: fmt.Sprintf("the decision path is held by another change for more than %s (a kernel or disk that does not answer?); nothing changed, try again", api.FormatDuration(wait))}
	}
}
