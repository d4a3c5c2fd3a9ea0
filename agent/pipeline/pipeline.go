// Package pipeline lets a connection's pipelined requests be in flight
// together while they reach the decision path in the order they were sent.
//
// The control server runs a connection's requests concurrently, but
// starts request n+1 only once request n has joined the decision path's
// queue (or finished): the path calls Joined when it has queued a
// decision. Both sides only share a context value, so neither imports the
// other.
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
