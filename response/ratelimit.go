package response

import (
	"fmt"
	"time"
)

// bucket is a token bucket: it refills at rate tokens per second up to burst.
type bucket struct {
	tokens float64
	last   time.Time
}

// limiter keeps one bucket per sender uid, bounded by an LRU: a uid evicted
// and seen again starts with a full bucket, which is the same as a new sender.
type limiter struct {
	rate    float64
	burst   float64
	buckets *lru[uint32, bucket]
}

func newLimiter(rate float64, burst, max int) *limiter {
	return &limiter{rate: rate, burst: float64(burst), buckets: newLRU[uint32, bucket](max)}
}

// take spends one token of uid's bucket at now.
func (l *limiter) take(uid uint32, now time.Time) error {
	n, ok := l.buckets.get(uid)
	if !ok {
		n, _ = l.buckets.put(uid, bucket{tokens: l.burst, last: now})
	}
	b := &n.val
	if el := now.Sub(b.last); el > 0 {
		b.tokens = min(l.burst, b.tokens+el.Seconds()*l.rate)
		b.last = now
	}
	if b.tokens < 1 {
		return fmt.Errorf("admit uid %d: %w (%.0f/s, burst %.0f)", uid, ErrRateLimited, l.rate, l.burst)
	}
	b.tokens--
	return nil
}
