package fleet

import (
	"context"
	"time"

	"github.com/parryhq/parry/response"
)

func (f *Fleet) requestResync() {
	if f.local == nil {
		return
	}
	select {
	case f.resync <- struct{}{}:
	default:
	}
}

func (f *Fleet) syncedDrops() uint64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.synced
}

// resyncLoop republishes this host's active blocks that the stream has no
// entry about, each time a resync is requested: once caught up at start,
// and after a reconnect that followed a queue overflow.
func (f *Fleet) resyncLoop(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-f.resync:
		}
		if err := f.waitDrained(ctx); err != nil {
			return
		}
		_, dropped := f.q.len()
		lctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		ds, err := f.local(lctx)
		cancel()
		if err != nil {
			f.setErr(err)
			f.log.Warn("fleet resync: cannot list local blocks", "err", err)
			continue
		}
		now, sent := f.now(), 0
		for _, d := range ds {
			for _, e := range entries(d, f.cfg.Name, now) {
				subject := subjectFor(f.cfg.SubjectPrefix, e.Target)
				f.mu.Lock()
				k := f.known[subject]
				f.mu.Unlock()
				if k.stored || e.Action != response.ActionBlock {
					continue
				}
				if err := f.q.pushWait(ctx, f.outMsg(e, now)); err != nil {
					return
				}
				sent++
			}
		}
		f.mu.Lock()
		f.synced = dropped
		f.mu.Unlock()
		if sent > 0 {
			f.log.Info("fleet resync: republished local blocks the stream lacked", "entries", sent)
		}
	}
}

// waitDrained waits until the consumer has handed over everything the
// stream held when asked, so that the known map is current.
func (f *Fleet) waitDrained(ctx context.Context) error {
	t := time.NewTicker(25 * time.Millisecond)
	defer t.Stop()
	for {
		if c := f.cons.Load(); c != nil && f.nc.IsConnected() {
			ictx, cancel := context.WithTimeout(ctx, apiTimeout)
			info, err := (*c).Info(ictx)
			cancel()
			if err == nil && info.NumPending == 0 && f.lastSeq.Load() >= info.Delivered.Stream {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
}
