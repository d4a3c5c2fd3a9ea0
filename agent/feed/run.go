package feed

import (
	"context"
	"time"
)

// ApplyFunc applies an Update through the daemon's decision path: the
// blocks of u.Diff (marked feed:NAME, expiring at u.Expires) and
// u.State() stored, put in the kernel and audited as one transaction. It
// returns nil only if all of that happened.
type ApplyFunc func(ctx context.Context, f *Feed, u *Update) error

// Run refreshes f until ctx ends: when f.Next() comes, or at once when
// kick delivers (`parry feed refresh`). Each Update — a failed fetch's
// too, which renews the last good entries — goes to apply and then to
// Commit. A fetch that changes nothing and renews nothing is not applied.
// Run is the one goroutine that fetches f.
func (f *Feed) Run(ctx context.Context, apply ApplyFunc, kick <-chan struct{}) {
	timer := time.NewTimer(0)
	defer timer.Stop()
	var notBefore time.Time
	for {
		at := f.Next()
		if at.Before(notBefore) {
			at = notBefore
		}
		timer.Reset(max(0, at.Sub(f.now())))
		select {
		case <-ctx.Done():
			return
		case <-kick:
		case <-timer.C:
		}
		u, err := f.Fetch(ctx)
		if err != nil && u == nil { // ErrBusy: another caller is fetching f
			notBefore = f.now().Add(time.Second)
			continue
		}
		var applyErr error
		if u.Diff.Changed() || u.Diff.Kept.Len() > 0 {
			applyErr = apply(ctx, f, u)
		}
		if ctx.Err() != nil {
			return
		}
		_ = f.Commit(u, applyErr) // ErrConflict cannot happen with one fetcher
	}
}
