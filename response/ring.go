package response

// ring is a FIFO of at most max items that grows on demand, so a key seen
// once costs one slot, not max.
type ring[T any] struct {
	buf  []T
	head int
	n    int
}

func (r *ring[T]) len() int { return r.n }

// at returns the i-th oldest item.
func (r *ring[T]) at(i int) T { return r.buf[(r.head+i)%len(r.buf)] }

// push appends v, dropping the oldest item when max are held.
func (r *ring[T]) push(v T, max int) {
	switch {
	case r.n < len(r.buf):
		r.buf[(r.head+r.n)%len(r.buf)] = v
		r.n++
	case len(r.buf) < max:
		if r.head != 0 { // straighten before growing
			buf := make([]T, r.n, min(max, 2*r.n+1))
			for i := range r.n {
				buf[i] = r.at(i)
			}
			r.buf, r.head = buf, 0
		}
		r.buf = append(r.buf, v)
		r.n++
	default: // full: overwrite the oldest
		r.buf[r.head] = v
		r.head = (r.head + 1) % len(r.buf)
	}
}

// popFront drops the oldest item.
func (r *ring[T]) popFront() {
	var zero T
	r.buf[r.head] = zero
	r.head = (r.head + 1) % len(r.buf)
	r.n--
}

// reset empties the ring, keeping its buffer for reuse.
func (r *ring[T]) reset() {
	clear(r.buf)
	r.buf, r.head, r.n = r.buf[:0], 0, 0
}
