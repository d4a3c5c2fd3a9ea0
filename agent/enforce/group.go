package enforce

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/parryhq/parry/agent/api"
	"github.com/parryhq/parry/agent/pipeline"
	"github.com/parryhq/parry/response"
)

// Group commit.
//
// A decision does not take the path's lock and commit on its own: it joins
// the queue of the next group (request), then either finds its outcome
// ready (another decision's goroutine led the group it was in) or takes the
// lock and leads: it takes every decision queued so far, in arrival order,
// and enforces them as EnforceBatch does — every run of consecutive blocks
// (or unblocks) with distinct targets shares one plan, one store commit
// (one sync) and one kernel transaction, and one audit write and sync; a
// member the guard refuses, or whose target conflicts, fails alone (it is
// left out of the plan); a store, kernel or audit failure fails every member
// of the run and puts both sides back. A target repeated in the group ends
// the run, so a block and an unblock of one target apply in arrival order.
// While one group commits, the next one gathers: under load, groups grow
// with the load and each member pays a share of one sync.
//
// Every member's outcome is set, and its channel closed, before the leader
// lets go of the lock: a decision that holds the lock and finds itself not
// done is still in the queue.

// request is one decision waiting in the queue for its group.
type request struct {
	dec  response.Decision
	opt  EnforceOptions
	out  Outcome
	done chan struct{}
}

// queue is the decisions waiting for the next group, in arrival order.
type queue struct {
	mu   sync.Mutex
	reqs []*request
}

func (q *queue) push(r *request) {
	q.mu.Lock()
	q.reqs = append(q.reqs, r)
	q.mu.Unlock()
}

// take empties the queue.
func (q *queue) take() []*request {
	q.mu.Lock()
	defer q.mu.Unlock()
	g := q.reqs
	q.reqs = nil
	return g
}

// remove takes r out of the queue; false if a leader took it already.
func (q *queue) remove(r *request) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	for i, x := range q.reqs {
		if x == r {
			q.reqs = append(q.reqs[:i], q.reqs[i+1:]...)
			return true
		}
	}
	return false
}

// Waiting is the number of decisions waiting for the next group.
func (dp *Path) Waiting() int {
	dp.q.mu.Lock()
	defer dp.q.mu.Unlock()
	return len(dp.q.reqs)
}

// enqueue runs dec in the next group and returns its outcome. It waits for
// the path at most dp.lockWait (then CodeBusy) or until ctx ends, unless a
// leader has taken dec already: then it waits for that group's commit.
func (dp *Path) enqueue(ctx context.Context, dec response.Decision, opt EnforceOptions) Outcome {
	r := &request{dec: dec, opt: opt, done: make(chan struct{})}
	dp.q.push(r)
	pipeline.Joined(ctx) // the connection's next request may now join behind this one
	t := time.NewTimer(dp.lockWait)
	defer t.Stop()
	select {
	case <-r.done:
		return r.out
	case dp.mu.ch <- struct{}{}:
		select {
		case <-r.done: // led by the group before
			dp.mu.Unlock()
			return r.out
		default:
		}
		func() {
			defer dp.mu.Unlock()
			dp.commitGroup(dp.q.take())
		}()
		<-r.done // r was queued and not done: it was in the group
		return r.out
	case <-ctx.Done():
		if dp.q.remove(r) {
			return Outcome{ID: dec.ID, Action: dec.Action, Err: ctx.Err()}
		}
		<-r.done
		return r.out
	case <-t.C:
		if dp.q.remove(r) {
			return Outcome{ID: dec.ID, Action: dec.Action, Err: &api.Error{Code: api.CodeBusy, Message: fmt.Sprintf(
				"the decision path is held by another change for more than %s (a kernel or disk that does not answer?); nothing changed, try again", api.FormatDuration(dp.lockWait))}}
		}
		<-r.done
		return r.out
	}
}

// commitGroup enforces a group, in order, and closes each member's done.
// Caller holds dp.mu.
func (dp *Path) commitGroup(g []*request) {
	decs := make([]response.Decision, len(g))
	opts := make([]EnforceOptions, len(g))
	for i, r := range g {
		decs[i], opts[i] = r.dec, r.opt
	}
	outs := make([]Outcome, len(g))
	answered := false
	defer func() {
		if answered {
			return
		}
		// A panic (a bug): no member may wait for ever. The panic goes on
		// to the control server's recovery, which logs it.
		for _, r := range g {
			r.out = Outcome{ID: r.dec.ID, Action: r.dec.Action, Err: api.Errorf(api.CodeInternal, "internal error in the decision path; see the daemon's log")}
			close(r.done)
		}
	}()
	dp.enforceRuns(decs, opts, outs)
	for i, r := range g {
		r.out = outs[i]
		close(r.done)
	}
	answered = true
}

// enforceRuns enforces decs in order, one commit per run (runLen), with
// outcomes in outs. Caller holds dp.mu.
func (dp *Path) enforceRuns(decs []response.Decision, opts []EnforceOptions, outs []Outcome) {
	for i := 0; i < len(decs); {
		n := runLen(decs[i:])
		switch {
		case n == 0:
			outs[i] = dp.enforceLocked(decs[i], opts[i])
			n = 1
		case decs[i].Action == response.ActionBlock:
			dp.blockRun(decs[i:i+n], outs[i:i+n], opts[i:i+n])
		default:
			dp.unblockRun(decs[i:i+n], outs[i:i+n], opts[i:i+n])
		}
		i += n
	}
}
