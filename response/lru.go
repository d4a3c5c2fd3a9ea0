package response

// lru is a map with a bound: inserting beyond max evicts the least recently
// used entry. Nodes are intrusive, so an entry costs one map slot and one
// node allocation; not safe for concurrent use (the Engine locks).
type lru[K comparable, V any] struct {
	m    map[K]*node[K, V]
	root node[K, V] // sentinel: root.next is the most recent, root.prev the least
	max  int
}

type node[K comparable, V any] struct {
	key        K
	val        V
	prev, next *node[K, V]
}

func newLRU[K comparable, V any](max int) *lru[K, V] {
	l := &lru[K, V]{m: make(map[K]*node[K, V]), max: max}
	l.root.next, l.root.prev = &l.root, &l.root
	return l
}

func (l *lru[K, V]) len() int { return len(l.m) }

// get returns the entry and marks it most recently used.
func (l *lru[K, V]) get(k K) (*node[K, V], bool) {
	n, ok := l.m[k]
	if ok {
		l.moveToFront(n)
	}
	return n, ok
}

// peek returns the entry without touching its recency.
func (l *lru[K, V]) peek(k K) (*node[K, V], bool) {
	n, ok := l.m[k]
	return n, ok
}

// put inserts or replaces k as the most recent entry and reports how many
// entries were evicted to stay within max.
func (l *lru[K, V]) put(k K, v V) (*node[K, V], int) {
	if n, ok := l.m[k]; ok {
		n.val = v
		l.moveToFront(n)
		return n, 0
	}
	n := &node[K, V]{key: k, val: v}
	l.m[k] = n
	l.insertFront(n)
	evicted := 0
	for len(l.m) > l.max {
		l.remove(l.root.prev)
		evicted++
	}
	return n, evicted
}

// putRecycled inserts k as the most recent entry. When the map is full it
// evicts the least recently used entry and reuses its node, value included
// (the caller resets it; its buffers can serve again), instead of
// allocating: under a flood of distinct keys every insert evicts.
func (l *lru[K, V]) putRecycled(k K) (n *node[K, V], evicted int) {
	if n, ok := l.m[k]; ok {
		l.moveToFront(n)
		return n, 0
	}
	for len(l.m) > l.max {
		l.remove(l.root.prev)
		evicted++
	}
	if len(l.m) == l.max && l.root.prev != &l.root {
		n = l.root.prev
		l.remove(n)
		evicted++
	} else {
		n = new(node[K, V])
	}
	n.key = k
	l.m[k] = n
	l.insertFront(n)
	return n, evicted
}

// oldest returns the least recently used entry.
func (l *lru[K, V]) oldest() (*node[K, V], bool) {
	if l.root.prev == &l.root {
		return nil, false
	}
	return l.root.prev, true
}

func (l *lru[K, V]) remove(n *node[K, V]) {
	n.prev.next = n.next
	n.next.prev = n.prev
	n.prev, n.next = nil, nil
	delete(l.m, n.key)
}

func (l *lru[K, V]) insertFront(n *node[K, V]) {
	n.prev = &l.root
	n.next = l.root.next
	l.root.next.prev = n
	l.root.next = n
}

func (l *lru[K, V]) moveToFront(n *node[K, V]) {
	if l.root.next == n {
		return
	}
	n.prev.next = n.next
	n.next.prev = n.prev
	l.insertFront(n)
}

// each calls f from the least to the most recently used entry.
func (l *lru[K, V]) each(f func(*node[K, V])) {
	for n := l.root.prev; n != &l.root; n = n.prev {
		f(n)
	}
}
