// Package events is the live event stream of `parry events`: a hub on the
// audit log's tap (audit.Tap) that fans every line appended out to the
// subscribers, each with its own bounded queue, and the stream op events
// writes (stream.go): an optional replay from the audit log joined to the
// live queue by seq.
//
// The hub never blocks the audit writer: Appended runs after the log's
// lock is released, takes only the hub's lock (a leaf) and each queue's
// (a leaf under it), and never waits on a subscriber. A queue that is full
// drops the event and counts it; the subscriber is told how many it missed
// (api.EventsMissed) before the next event it gets.
package events

import (
	"bytes"
	"slices"
	"sync"
	"sync/atomic"
)

// DefaultQueueLen is the events a subscriber's queue holds (the events it
// may fall behind by) before it misses some.
const DefaultQueueLen = 4096

// maxPending bounds the appends the hub holds back while it waits for an
// earlier one: concurrent appenders call Appended out of order, and one
// descheduled between the log's unlock and its call can be overtaken by
// many others. Past it, the hub skips the gap rather than hold on; the
// skipped append's events, when it comes, are counted missed.
const maxPending = 1 << 13

// Hub fans the audit log's lines out to subscribers.
type Hub struct {
	queueLen int
	n        atomic.Int32 // subscribers

	mu      sync.Mutex
	last    uint64 // seq of the last append delivered (or skipped)
	pending map[uint64]chunk
	subs    []*Sub
}

// chunk is one append held back until the ones before it are delivered.
type chunk struct {
	last  uint64
	names []string
	lines []byte
}

// NewHub returns a hub whose subscribers' queues hold queueLen events
// (0: DefaultQueueLen).
func NewHub(queueLen int) *Hub {
	if queueLen <= 0 {
		queueLen = DefaultQueueLen
	}
	return &Hub{queueLen: queueLen, pending: map[uint64]chunk{}}
}

// Start sets the seq the log's next append starts after (audit.Log.SetTap's
// answer).
func (h *Hub) Start(seq uint64) {
	h.mu.Lock()
	h.last = max(h.last, seq)
	h.mu.Unlock()
}

// Seq is the seq of the last line delivered.
func (h *Hub) Seq() uint64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.last
}

// QueueLen is the bound of every subscriber's queue.
func (h *Hub) QueueLen() int { return h.queueLen }

// Tapping implements audit.Tap: lines are copied only while someone
// subscribes.
func (h *Hub) Tapping() bool { return h.n.Load() > 0 }

// Appended implements audit.Tap. Appends are delivered in seq order:
// one whose before is ahead of the last delivered waits (at most
// maxPending of them) for the ones before it.
func (h *Hub) Appended(before, last uint64, names []string, lines []byte) {
	h.mu.Lock()
	defer h.mu.Unlock()
	switch {
	case len(h.subs) == 0:
		h.last = max(h.last, last)
		clear(h.pending)
		return
	case before < h.last: // from before the first subscriber, or after a skipped gap: too late
		if lines != nil {
			for _, s := range h.subs {
				for i, name := range names {
					s.miss(last-uint64(len(names)-1-i), name)
				}
			}
		}
		return
	case before > h.last:
		h.pending[before] = chunk{last, names, lines}
		if len(h.pending) <= maxPending {
			return
		}
		h.last = slices.Min(keys(h.pending)) // an append that never reported: skip it
	default:
		h.deliver(last, names, lines)
		h.last = last
	}
	for {
		c, ok := h.pending[h.last]
		if !ok {
			return
		}
		delete(h.pending, h.last)
		h.deliver(c.last, c.names, c.lines)
		h.last = c.last
	}
}

func keys(m map[uint64]chunk) []uint64 {
	out := make([]uint64, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	return out
}

// deliver offers each line to every subscriber. Caller holds h.mu.
func (h *Hub) deliver(last uint64, names []string, lines []byte) {
	if len(names) == 0 || len(lines) == 0 {
		return
	}
	seq := last - uint64(len(names)) + 1
	for _, name := range names {
		i := bytes.IndexByte(lines, '\n')
		if i < 0 {
			return // cannot happen: one line per name
		}
		line := lines[:i+1]
		lines = lines[i+1:]
		for _, s := range h.subs {
			s.offer(seq, name, line)
		}
		seq++
	}
}

// Subscribe adds a subscriber that hears of the events want accepts (nil:
// all) from now on. Close it when done.
func (h *Hub) Subscribe(want func(event string) bool) *Sub {
	s := &Sub{hub: h, want: want, q: make([]Item, h.queueLen), ready: make(chan struct{}, 1)}
	h.mu.Lock()
	h.subs = append(h.subs, s)
	h.n.Store(int32(len(h.subs)))
	h.mu.Unlock()
	return s
}

func (h *Hub) unsubscribe(s *Sub) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if i := slices.Index(h.subs, s); i >= 0 {
		h.subs = slices.Delete(h.subs, i, i+1)
	}
	h.n.Store(int32(len(h.subs)))
}

// Item is one event in a subscriber's queue: an audit line, or (Line nil)
// only the report of a gap. Missed > 0: before this event, Missed events
// were dropped, the latest with seq MissedMax, after the one with seq
// After.
type Item struct {
	Seq   uint64
	Event string
	Line  []byte // the audit line, newline included (shared: read only)

	Missed    int
	After     uint64
	MissedMax uint64
}

// Sub is one subscriber: a bounded queue (a ring) the hub fills and the
// stream drains.
type Sub struct {
	hub   *Hub
	want  func(string) bool
	ready chan struct{} // a token when the queue went from empty to not

	mu        sync.Mutex
	q         []Item
	head, n   int
	last      uint64 // seq of the last event queued
	missed    int    // dropped since the last event queued
	after     uint64
	missedMax uint64
	closed    bool
}

// offer queues an event, or counts it missed if the queue is full; it
// never waits. Caller holds the hub's lock.
func (s *Sub) offer(seq uint64, name string, line []byte) {
	if s.want != nil && !s.want(name) {
		return
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	if s.n == len(s.q) {
		s.missLocked(seq)
		s.mu.Unlock()
		return
	}
	it := Item{Seq: seq, Event: name, Line: line}
	if s.missed > 0 {
		it.Missed, it.After, it.MissedMax = s.missed, s.after, s.missedMax
		s.missed = 0
	}
	s.q[(s.head+s.n)%len(s.q)] = it
	s.n++
	s.last = seq
	s.mu.Unlock()
	select {
	case s.ready <- struct{}{}:
	default:
	}
}

// miss counts an event the subscriber will not get.
func (s *Sub) miss(seq uint64, name string) {
	if s.want != nil && !s.want(name) {
		return
	}
	s.mu.Lock()
	s.missLocked(seq)
	s.mu.Unlock()
	select {
	case s.ready <- struct{}{}:
	default:
	}
}

func (s *Sub) missLocked(seq uint64) {
	if s.missed == 0 {
		s.after = s.last
	}
	s.missed++
	s.missedMax = max(s.missedMax, seq)
}

// Ready has a token when events may be waiting.
func (s *Sub) Ready() <-chan struct{} { return s.ready }

// Take moves the queued events to dst and returns it: with, when events
// were missed since the last one queued, a last Item (Line nil)
// reporting them.
func (s *Sub) Take(dst []Item) []Item {
	s.mu.Lock()
	defer s.mu.Unlock()
	for ; s.n > 0; s.n-- {
		dst = append(dst, s.q[s.head])
		s.q[s.head] = Item{}
		s.head = (s.head + 1) % len(s.q)
	}
	if s.missed > 0 {
		dst = append(dst, Item{Missed: s.missed, After: s.after, MissedMax: s.missedMax})
		s.missed = 0
	}
	return dst
}

// Undelivered is the number of events queued or missed, not yet taken:
// what a subscriber dropped for not reading is told it missed.
func (s *Sub) Undelivered() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := s.n + s.missed
	for i := range s.n {
		n += s.q[(s.head+i)%len(s.q)].Missed
	}
	return n
}

// Close removes the subscriber.
func (s *Sub) Close() {
	s.hub.unsubscribe(s)
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
}
