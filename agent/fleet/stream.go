package fleet

import (
	"context"
	"errors"
	"fmt"
	"math"
	"runtime"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/parryhq/parry/response"
)

const (
	publishBatch   = 1024
	publishTimeout = 5 * time.Second
	apiTimeout     = 5 * time.Second
)

// streamConfig is the stream this agent creates when there is none: one
// subject per target, only the latest message kept, and per-message TTLs
// so that expired blocks vanish.
func (f *Fleet) streamConfig() jetstream.StreamConfig {
	return jetstream.StreamConfig{
		Name:              f.cfg.Stream,
		Description:       "parry fleet: the latest block or unblock per target",
		Subjects:          []string{f.filter()},
		Storage:           jetstream.FileStorage,
		Replicas:          f.cfg.Replicas,
		MaxMsgsPerSubject: 1,
		Discard:           jetstream.DiscardOld,
		AllowMsgTTL:       true,
		Duplicates:        2 * time.Minute,
	}
}

func (f *Fleet) filter() string { return f.cfg.SubjectPrefix + ".d.>" }

// ensureStream returns the stream, creating it if missing. An existing
// stream is used as it is, provided it keeps per-message TTLs.
func (f *Fleet) ensureStream(ctx context.Context) (jetstream.Stream, error) {
	s, err := f.js.Stream(ctx, f.cfg.Stream)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		s, err = f.js.CreateStream(ctx, f.streamConfig())
		if err == nil {
			f.log.Info("fleet stream created", "stream", f.cfg.Stream, "subjects", f.filter())
		}
	}
	if err != nil {
		return nil, fmt.Errorf("fleet stream %s: %w", f.cfg.Stream, err)
	}
	if c := s.CachedInfo().Config; !c.AllowMsgTTL || c.MaxMsgsPerSubject != 1 {
		return nil, fmt.Errorf("fleet stream %s: exists without allow_msg_ttl and max_msgs_per_subject 1; delete it or name another in fleet.stream", f.cfg.Stream)
	}
	return s, nil
}

// sendLoop publishes the queue in order, in batches of distinct subjects,
// and retries from the first failure with backoff while NATS is away.
func (f *Fleet) sendLoop(ctx context.Context) {
	backoff := 50 * time.Millisecond
	for ctx.Err() == nil {
		if n, _ := f.q.len(); n == 0 || !f.nc.IsConnected() {
			select {
			case <-ctx.Done():
			case <-f.q.ready:
			case <-time.After(time.Second):
			}
			continue
		}
		batch := f.q.peek(publishBatch)
		done, err := f.publish(ctx, batch)
		f.q.pop(batch, done)
		if err == nil {
			backoff = 50 * time.Millisecond
			continue
		}
		f.setErr(err)
		f.log.Debug("fleet publish failed; will retry", "err", err, "backoff", backoff)
		select {
		case <-ctx.Done():
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 2*time.Second)
	}
}

// publish sends a batch concurrently and waits for the acks. done[i] says
// whether entry i is stored (or no longer worth storing).
func (f *Fleet) publish(ctx context.Context, batch []outMsg) ([]bool, error) {
	done := make([]bool, len(batch))
	futures := make([]jetstream.PubAckFuture, len(batch))
	now := f.now()
	msgs := f.encodeAll(batch)
	var firstErr error
	for i, m := range batch {
		var ttl time.Duration
		if !m.until.IsZero() {
			left := m.until.Sub(now)
			if left <= 0 {
				done[i] = true // expired while waiting: nothing to tell
				continue
			}
			ttl = time.Duration(math.Ceil(left.Seconds())) * time.Second
		}
		msg := msgs[i]
		if msg == nil {
			done[i] = true // cannot ever be encoded; logged as last error
			continue
		}
		opts := []jetstream.PublishOpt{jetstream.WithMsgID(m.msgID)}
		if ttl > 0 {
			opts = append(opts, jetstream.WithMsgTTL(ttl))
		}
		fut, err := f.js.PublishMsgAsync(msg, opts...)
		if err != nil {
			firstErr = cmpErr(firstErr, fmt.Errorf("publish %s: %w", m.subject, err))
			continue
		}
		futures[i] = fut
	}
	timer := time.NewTimer(publishTimeout)
	defer timer.Stop()
	for i, fut := range futures {
		if fut == nil {
			continue
		}
		select {
		case <-fut.Ok():
			done[i] = true
			f.published.Add(1)
		case err := <-fut.Err():
			firstErr = cmpErr(firstErr, fmt.Errorf("publish %s: %w", batch[i].subject, err))
		case <-timer.C:
			return done, cmpErr(firstErr, fmt.Errorf("publish: no ack within %v", publishTimeout))
		case <-ctx.Done():
			return done, ctx.Err()
		}
	}
	return done, firstErr
}

// encodeAll encodes and signs a batch, on every CPU when it is large
// (signing is the sender's main cost). A nil message could not be encoded.
func (f *Fleet) encodeAll(batch []outMsg) []*nats.Msg {
	msgs := make([]*nats.Msg, len(batch))
	one := func(i int) {
		body, sig, err := encode(batch[i].e, f.key)
		if err != nil {
			f.setErr(err)
			return
		}
		msg := nats.NewMsg(batch[i].subject)
		msg.Data = body
		if sig != "" {
			msg.Header.Set(sigHeader, sig)
		}
		msgs[i] = msg
	}
	workers := runtime.GOMAXPROCS(0)
	if f.key == nil || len(batch) < 64 || workers < 2 {
		for i := range batch {
			one(i)
		}
		return msgs
	}
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := w; i < len(batch); i += workers {
				one(i)
			}
		})
	}
	wg.Wait()
	return msgs
}

func cmpErr(first, err error) error {
	if first != nil {
		return first
	}
	return err
}

// receiveLoop keeps an ordered consumer on the stream, starting from the
// latest message of every subject, and recreates it if the stream goes.
func (f *Fleet) receiveLoop(ctx context.Context) {
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		err := f.subscribe(ctx)
		if err == nil || ctx.Err() != nil {
			return
		}
		f.setErr(err)
		f.log.Debug("fleet subscribe failed; will retry", "err", err, "backoff", backoff)
		select {
		case <-ctx.Done():
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 2*time.Second)
	}
}

func (f *Fleet) subscribe(ctx context.Context) error {
	actx, cancel := context.WithTimeout(ctx, apiTimeout)
	defer cancel()
	s, err := f.ensureStream(actx)
	if err != nil {
		return err
	}
	info, err := s.Info(actx)
	if err != nil {
		return fmt.Errorf("fleet stream info: %w", err)
	}
	cons, err := s.OrderedConsumer(actx, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{f.filter()},
		DeliverPolicy:  jetstream.DeliverLastPerSubjectPolicy,
	})
	if err != nil {
		return fmt.Errorf("fleet consumer: %w", err)
	}
	failed := make(chan error, 1)
	cc, err := cons.Consume(func(m jetstream.Msg) { f.handle(ctx, m) },
		jetstream.ConsumeErrHandler(func(_ jetstream.ConsumeContext, err error) {
			if errors.Is(err, jetstream.ErrStreamNotFound) {
				select {
				case failed <- err:
				default:
				}
			}
		}))
	if err != nil {
		return fmt.Errorf("fleet consume: %w", err)
	}
	defer cc.Stop()
	f.cons.Store(&cons)
	if info.State.Msgs == 0 {
		f.markCaughtUp()
	}
	go f.watchCatchUp(ctx, cons)
	select {
	case <-ctx.Done():
		return nil
	case err := <-failed:
		return fmt.Errorf("fleet consume: %w", err)
	}
}

// watchCatchUp declares the catch-up done once the consumer has nothing
// pending and everything delivered has been handled. (handle also declares
// it on the message that reports nothing pending; this covers an empty or
// emptied stream.)
func (f *Fleet) watchCatchUp(ctx context.Context, cons jetstream.Consumer) {
	t := time.NewTicker(25 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-f.caughtUp:
			return
		case <-t.C:
		}
		ictx, cancel := context.WithTimeout(ctx, apiTimeout)
		info, err := cons.Info(ictx)
		cancel()
		if err == nil && info.NumPending == 0 && f.lastSeq.Load() >= info.Delivered.Stream {
			f.markCaughtUp()
		}
	}
}

func (f *Fleet) markCaughtUp() {
	f.catchOnce.Do(func() {
		close(f.caughtUp)
		f.requestResync()
	})
}

// handle checks one received message and queues it for the applier, in
// stream order. Messages that need no enforcement still pass through the
// queue, so that lastSeq only moves once everything before is applied.
func (f *Fleet) handle(ctx context.Context, m jetstream.Msg) {
	in := inbound{}
	if md, err := m.Metadata(); err == nil {
		in.seq, in.last = md.Sequence.Stream, md.NumPending == 0
	}
	f.received.Add(1)
	// An entry we just sent, coming back, needs no signature check
	// (verifying is the receiver's main cost). Anything else claiming our
	// name is checked like the rest: a forgery must not pass for ours.
	e, err := parse(m.Subject(), m.Data(), f.cfg.SubjectPrefix)
	if err == nil && !(e.Origin == f.cfg.Name && f.sentByUs(m.Subject(), e.ID)) {
		err = verify(e, m.Data(), m.Headers().Get(sigHeader), f.trusted)
	}
	switch {
	case err != nil:
		f.rejected.Add(1)
		f.setErr(err)
		f.log.Warn("fleet decision rejected", "subject", m.Subject(), "err", err)
	case e.Origin == f.cfg.Name:
		f.note(m.Subject(), e, true)
		f.echoes.Add(1)
	case !f.seen.add(e.ID + "|" + string(e.Action)):
		f.note(m.Subject(), e, true)
		f.duplicates.Add(1)
	case e.Action == response.ActionBlock && !e.Until.IsZero() && !e.Until.After(f.now()):
		f.note(m.Subject(), e, true)
		f.expired.Add(1)
	default:
		f.note(m.Subject(), e, true)
		in.e, in.apply = e, true
	}
	select {
	case f.inbox <- in:
	case <-ctx.Done():
	}
}
