package fleet

import (
	"context"
	"sync"
	"time"
)

// outMsg is one entry waiting to be published.
type outMsg struct {
	subject string
	msgID   string // Nats-Msg-Id: JetStream drops a retried duplicate
	e       entry  // encoded and signed when sent, off the agent's lock
	unblock bool
	until   time.Time // block expiry (zero: permanent); unblock: how long to keep the tombstone
}

// queue is a bounded FIFO. When full, Push drops the oldest entry: of two
// decisions, the newer one is the more useful to the fleet.
type queue struct {
	mu      sync.Mutex
	buf     []outMsg // ring
	head, n int
	dropped uint64
	ready   chan struct{} // signalled (non-blocking) on every push
	space   chan struct{} // signalled (non-blocking) on every pop
}

func newQueue(size int) *queue {
	return &queue{buf: make([]outMsg, size), ready: make(chan struct{}, 1), space: make(chan struct{}, 1)}
}

// push appends m, dropping the oldest entry if full. It reports whether one was dropped.
func (q *queue) push(m outMsg) bool {
	q.mu.Lock()
	dropped := false
	if q.n == len(q.buf) {
		q.buf[q.head] = outMsg{}
		q.head = (q.head + 1) % len(q.buf)
		q.n--
		q.dropped++
		dropped = true
	}
	q.buf[(q.head+q.n)%len(q.buf)] = m
	q.n++
	q.mu.Unlock()
	select {
	case q.ready <- struct{}{}:
	default:
	}
	return dropped
}

// pushWait appends m, waiting for room rather than dropping anything
// (resync: what it sends is already in the store, so it may take its time).
func (q *queue) pushWait(ctx context.Context, m outMsg) error {
	for {
		q.mu.Lock()
		room := q.n < len(q.buf)
		q.mu.Unlock()
		if room { // only this goroutine waits for room, so it is still there
			q.push(m)
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-q.space:
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// peek returns up to max entries from the front, stopping before the first
// entry whose subject is already in the batch: entries about one target
// must be stored in order, and a batch is published concurrently.
func (q *queue) peek(max int) []outMsg {
	q.mu.Lock()
	defer q.mu.Unlock()
	out := make([]outMsg, 0, min(max, q.n))
	seen := make(map[string]struct{}, cap(out))
	for i := 0; i < q.n && len(out) < max; i++ {
		m := q.buf[(q.head+i)%len(q.buf)]
		if _, dup := seen[m.subject]; dup {
			break
		}
		seen[m.subject] = struct{}{}
		out = append(out, m)
	}
	return out
}

// pop removes the first k entries (the ones a peek returned and that are
// now stored), unless they were dropped meanwhile: done flags, indexed like
// the peeked batch, say which were stored. Only a stored prefix is removed,
// so that order per target is kept for the retry.
func (q *queue) pop(batch []outMsg, done []bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	defer func() {
		select {
		case q.space <- struct{}{}:
		default:
		}
	}()
	for i := range batch {
		if !done[i] || q.n == 0 {
			return
		}
		front := &q.buf[q.head]
		if front.msgID != batch[i].msgID {
			return // the front was dropped by an overflow meanwhile
		}
		*front = outMsg{}
		q.head = (q.head + 1) % len(q.buf)
		q.n--
	}
}

func (q *queue) len() (n int, dropped uint64) {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.n, q.dropped
}

// kick wakes the publisher (after a reconnect).
func (q *queue) kick() {
	select {
	case q.ready <- struct{}{}:
	default:
	}
}

// idSet remembers the last n ids seen, to drop duplicates cheaply.
type idSet struct {
	mu   sync.Mutex
	set  map[string]struct{}
	ring []string
	next int
}

func newIDSet(n int) *idSet {
	return &idSet{set: make(map[string]struct{}, n), ring: make([]string, n)}
}

// add records id and reports whether it is new.
func (s *idSet) add(id string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.set[id]; ok {
		return false
	}
	if old := s.ring[s.next]; old != "" {
		delete(s.set, old)
	}
	s.ring[s.next] = id
	s.next = (s.next + 1) % len(s.ring)
	s.set[id] = struct{}{}
	return true
}
