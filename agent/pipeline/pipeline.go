// Package pipeline lets a connection's pipelined requests be in flight
// together while they reach the decision path in the order they were sent.
//
// The control server runs a connection's requests one after another, and
// when one has taken its place in the decision path's queue (the path
// calls Joined) and waits for its group's commit, it goes on reading and
// running the next request on another goroutine. Both sides only share a
// context value, so neither imports the other.
package pipeline

import (
	"context"
	"sync"
)

type key struct{}

// WithJoined returns ctx carrying fn, called once (by Joined) when the
// request has taken its place in the decision path's queue.
func WithJoined(ctx context.Context, fn func()) context.Context {
	return context.WithValue(ctx, key{}, sync.OnceFunc(fn))
}

// Joined tells the request's connection that it has its place in the
// decision path's queue; a no-op without WithJoined.
func Joined(ctx context.Context) {
	if fn, ok := ctx.Value(key{}).(func()); ok {
		fn()
	}
}
