package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/parryhq/parry/agent/api"
	"github.com/parryhq/parry/agent/control"
	"github.com/parryhq/parry/agent/enforce"
	"github.com/parryhq/parry/agent/feed"
	"github.com/parryhq/parry/agent/store"
)

// The feeds part (docs/feeds.md): every configured feed refreshes on its
// own goroutine (package agent/feed fetches, parses and diffs) and hands
// each refresh to the decision path as one transaction
// (enforce.Path.ApplyFeed), with the feed's new state stored in the same
// store commit. The part owns the feeds and the outcome of their last
// apply; it never touches the store or the kernel itself.

// feedKeyPrefix is the store key of a feed's last good state: feed/NAME.
const feedKeyPrefix = "feed/"

// feedApplier is what the feeds part needs of the decision path.
type feedApplier interface {
	ApplyFeed(ctx context.Context, fc enforce.FeedChange) (enforce.FeedOutcome, error)
}

// feedsPart runs the configured feeds. The list is fixed at start (a
// change of `feeds:` needs a restart).
type feedsPart struct {
	log   *slog.Logger
	now   func() time.Time
	path  feedApplier
	bulk  func()     // after a large refresh, once its update is garbage: return freed memory to the OS
	feeds []*feedRun // read-only once built
}

// feedRun is one feed and its loop.
type feedRun struct {
	f    *feed.Feed
	kick chan chan struct{} // refresh now; the channel sent is closed when done

	mu   sync.Mutex
	last *api.FeedApply // the last apply's outcome; nil before the first
}

// newFeeds builds the feeds of cfgs and restores their last good states
// from the store. A state that does not decode is logged and dropped (the
// feed then fetches at once and its diff starts from nothing: the blocks
// of the old state stay until they expire).
func newFeeds(cfgs []feed.Config, st *store.Store, path feedApplier, bulk func(), log *slog.Logger, now func() time.Time) (*feedsPart, error) {
	p := &feedsPart{log: log, now: now, path: path, bulk: bulk}
	for _, c := range cfgs {
		f, err := feed.New(c, feed.Options{Now: now})
		if err != nil {
			return nil, fmt.Errorf("agent: %w", err)
		}
		b, err := st.Get(feedKeyPrefix + c.Name)
		if err != nil {
			return nil, fmt.Errorf("agent: feed %s: %w", c.Name, err)
		}
		if b != nil {
			var s feed.State
			if err := s.UnmarshalBinary(b); err != nil {
				log.Warn("feed state unreadable; fetching afresh", "feed", c.Name, "err", err)
			} else {
				f.Restore(&s)
			}
		}
		p.feeds = append(p.feeds, &feedRun{f: f, kick: make(chan chan struct{})})
	}
	return p, nil
}

// Run refreshes every feed until ctx ends.
func (p *feedsPart) Run(ctx context.Context) {
	var wg sync.WaitGroup
	for _, r := range p.feeds {
		wg.Add(1)
		go func() { defer wg.Done(); p.loop(ctx, r) }()
	}
	wg.Wait()
}

// loop is the one goroutine that fetches r's feed: when its time comes,
// or at once when kicked (`parry feed refresh`).
func (p *feedsPart) loop(ctx context.Context, r *feedRun) {
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		timer.Reset(max(0, r.f.Next().Sub(p.now())))
		var done chan struct{}
		select {
		case <-ctx.Done():
			return
		case done = <-r.kick:
		case <-timer.C:
		}
		if p.refresh(ctx, r) >= enforce.BulkTargets {
			p.bulk() // the update, its diff and the path's plan are garbage now
		}
		if done != nil {
			close(done)
		}
		if ctx.Err() != nil {
			return
		}
	}
}

// refresh fetches r's feed once and applies the update; it returns the
// number of entries the update carried.
func (p *feedsPart) refresh(ctx context.Context, r *feedRun) int {
	name := r.f.Config().Name
	u, err := r.f.Fetch(ctx)
	if u == nil { // ErrBusy cannot happen with one fetcher
		p.log.Error("feed fetch", "feed", name, "err", err)
		return 0
	}
	n := u.Diff.Added.Len() + u.Diff.Removed.Len() + u.Diff.Kept.Len()
	if err != nil {
		p.log.Warn("feed refresh failed; the last good entries stay", "feed", name, "err", err)
	}
	var applyErr error
	if u.Diff.Changed() || u.Diff.Kept.Len() > 0 || u.State() != nil {
		applyErr = p.apply(ctx, r, u)
	}
	if ctx.Err() != nil {
		return n
	}
	if applyErr != nil {
		p.log.Error("feed apply failed; the last good state stays", "feed", name, "err", applyErr)
	}
	_ = r.f.Commit(u, applyErr) // ErrConflict cannot happen with one fetcher
	return n
}

// apply hands one update to the decision path: added and kept entries
// blocked until u.Expires, removed ones lifted, and the new state stored
// in the same transaction.
func (p *feedsPart) apply(ctx context.Context, r *feedRun, u *feed.Update) error {
	name := r.f.Config().Name
	fc := enforce.FeedChange{Feed: name, Until: u.Expires}
	fc.Block = make([]netip.Prefix, 0, u.Diff.Added.Len()+u.Diff.Kept.Len())
	fc.Block = slices.AppendSeq(fc.Block, u.Diff.Added.All())
	fc.Block = slices.AppendSeq(fc.Block, u.Diff.Kept.All())
	fc.Lift = u.Diff.Removed.Prefixes()
	if st := u.State(); st != nil {
		b, err := st.MarshalBinary()
		if err != nil {
			return fmt.Errorf("feed %s: state: %w", name, err)
		}
		fc.KV = map[string][]byte{feedKeyPrefix + name: b}
	}
	out, err := p.path.ApplyFeed(ctx, fc)
	fa := &api.FeedApply{At: p.now().UTC(), Added: out.Added, Renewed: out.Renewed, Kept: out.Kept,
		Lifted: out.Lifted, Others: out.Others, Carved: out.Carved, Refused: out.Refused, Example: out.Example}
	if err != nil {
		fa = &api.FeedApply{At: fa.At, Error: err.Error()}
	} else if n := out.RefusedTotal(); n > 0 {
		p.log.Warn("feed entries refused by the guard", "feed", name, "refused", out.Refused)
	}
	r.mu.Lock()
	r.last = fa
	r.mu.Unlock()
	return err
}

// find returns the feed called name, or nil.
func (p *feedsPart) find(name string) *feedRun {
	for _, r := range p.feeds {
		if r.f.Config().Name == name {
			return r
		}
	}
	return nil
}

// info is what `parry feed list` shows of r.
func (r *feedRun) info() api.FeedInfo {
	st := r.f.Status()
	fi := api.FeedInfo{Name: st.Name, Source: st.Source, Entries: st.Entries, Entries4: st.Entries4, Entries6: st.Entries6,
		LastRefresh: st.LastRefresh, LastSuccess: st.LastSuccess, LastChange: st.LastChange, Next: st.Next,
		LastError: st.LastError, Failures: st.Failures, Stale: st.Stale,
		Lines: st.Report.Lines, Malformed: st.Report.Malformed, TooBroad: st.Report.TooBroad,
		Duplicates: st.Report.Duplicates, Covered: st.Report.Covered}
	for _, b := range st.Report.Bad {
		fi.Bad = append(fi.Bad, api.FeedBadLine{Line: b.Line, Reason: b.Reason, Text: b.Text})
	}
	r.mu.Lock()
	if r.last != nil {
		la := *r.last
		fi.LastApply = &la
	}
	r.mu.Unlock()
	return fi
}

func (p *feedsPart) opList(context.Context, *control.Call) (any, error) {
	out := api.FeedList{Feeds: []api.FeedInfo{}}
	for _, r := range p.feeds {
		out.Feeds = append(out.Feeds, r.info())
	}
	return out, nil
}

// feedRefreshWait bounds how long op feed_refresh waits for the refresh:
// the feed's own timeout bounds the fetch, the path's LockWait the apply.
const feedRefreshWait = 11 * time.Minute

func (p *feedsPart) opRefresh(ctx context.Context, c *control.Call) (any, error) {
	var params struct {
		Name string `json:"name"`
	}
	if err := c.Decode(&params); err != nil {
		return nil, err
	}
	r := p.find(params.Name)
	if r == nil {
		return nil, api.Errorf(api.CodeBadRequest, "feed %q is not configured (parry feed list)", truncate(params.Name, 64))
	}
	ctx, cancel := context.WithTimeout(ctx, feedRefreshWait)
	defer cancel()
	done := make(chan struct{})
	select {
	case r.kick <- done:
	case <-ctx.Done():
		return nil, ctxErr(ctx.Err())
	}
	select {
	case <-done:
	case <-ctx.Done():
		return nil, ctxErr(ctx.Err())
	}
	return r.info(), nil
}

// ctxErr is a bounded wait's end as a protocol error.
func ctxErr(err error) error {
	if errors.Is(err, context.DeadlineExceeded) {
		return api.Errorf(api.CodeBusy, "feed refresh did not finish in time; see parry feed list")
	}
	return api.Errorf(api.CodeShuttingDown, "the daemon is stopping")
}

// register adds the feeds' ops.
func (p *feedsPart) register(s *control.Server) {
	s.Handle("feed_list", control.PermAdmin, p.opList)
	s.HandleParams("feed_refresh", control.PermAdmin, p.opRefresh)
}
