// Package enforce is the decision path: the one place a block becomes
// real. Every change to the kernel's blocks and lockdown goes through
// Path.Enforce (or EnforceBatch): the guard checks the targets, the store
// commits the decision (fsync), the kernel applies it, the audit log
// records it, and the observers hear of it. Read enforce.go (the path of
// one decision) and record.go (its audit line).
//
// The Path owns the block index, the guard's inputs (allowlist, minimum
// prefixes, the host's own addresses), the lockdown state and the sender
// block cap, all under its one mutex. Others read snapshots (Blocks, Stats,
// Lockdown, Active) or ask it to re-assert, prune or sweep.
package enforce

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sync/atomic"
	"time"

	"github.com/parryhq/parry/agent/api"
	"github.com/parryhq/parry/agent/store"
	"github.com/parryhq/parry/firewall"
	"github.com/parryhq/parry/response"
)

// Kernel is the kernel writes the decision path makes. Production passes
// *firewall.NFT; tests inject failures.
type Kernel interface {
	Block(elems []firewall.Element) error
	Unblock(prefixes []netip.Prefix) error
	// Apply deletes del, then adds or re-times add, in one transaction
	// (the union's diff: kunion.go).
	Apply(del, add []firewall.Element) error
	// AllElements reads every block set (Reassert, when the kernel holds
	// elements that overlap the union's pieces).
	AllElements() ([]firewall.Element, error)
	SetAllow(prefixes []netip.Prefix) error
	Lockdown(l firewall.Lockdown) error
	Release() error
}

var _ Kernel = (*firewall.NFT)(nil)

// BulkTargets is the size of a change after which the daemon returns freed
// memory to the OS (netlink and store buffers of a 100k-block load would
// otherwise stay in RSS): Options.OnBulk is called.
const BulkTargets = 1000

// Observer is told about every decision the path enforced (or refused),
// after the store and kernel have it, with the path's state right after
// it. It runs synchronously under the path's lock: keep it short, hand slow
// work to a goroutine, and never call the Path from it.
type Observer func(dec response.Decision, out Outcome, st State)

// State is what an observer sees of the path after a decision.
type State struct {
	Blocks4, Blocks6 int               // active blocks by family (expired ones not yet pruned included)
	Lockdown         api.LockdownState // the lockdown in force
	LockdownID       string            // the stored lockdown's ID, in force or expired; "" none
}

// Stats are the path's counts and lockdown, from memory.
type Stats struct {
	Lockdown  api.LockdownState // the lockdown in force
	Active    int               // blocks in force
	Blocks4   int               // blocks by family, expired ones not yet pruned included
	Blocks6   int
	Decisions int // decisions that still own a block
}

// GuardConfig are the guard's inputs from the config.
type GuardConfig struct {
	Allow        []netip.Prefix // never blocked
	MinV4, MinV6 int            // shortest prefixes allowed
}

// Options are the Path's dependencies.
type Options struct {
	Kernel Kernel
	Store  *store.Store
	Record *Record
	Log    *slog.Logger     // default slog.Default()
	Now    func() time.Time // default time.Now
	// HostAddrs reads the host's own addresses for the guard; default
	// HostAddrs.
	HostAddrs func() ([]netip.Addr, error)
	// SenderCap is response.sender_block_cap in force (the policy's config).
	SenderCap func() response.BlockCap
	// OnKernelError is told of every failed kernel write (self-heal checks
	// the table). Called under the path's lock: it must not block.
	OnKernelError func(error)
	// OnBulk is called after a change of BulkTargets targets or more.
	OnBulk func()
	// LockWait bounds how long a decision waits for the path while another
	// change holds it (answered busy); default DefaultLockWait.
	LockWait time.Duration
	// CrashAfterCommit, set by tests, simulates a crash between the store
	// commit of a change and its audit write: when it returns true, the
	// change stays committed and its audit line is never written.
	CrashAfterCommit func() bool
}

// Path is the decision path.
type Path struct {
	kernel      Kernel
	store       *store.Store
	rec         *Record
	log         *slog.Logger
	now         func() time.Time
	hostAddrs   func() ([]netip.Addr, error)
	kernelError func(error)
	bulk        func()
	crash       func() bool
	lockWait    time.Duration
	own         atomic.Pointer[[]netip.Addr] // guard.Own, for readers that must not wait (Own)

	// mu serializes every change to the kernel's blocks and lockdown, and
	// guards blocks, guard, gcfg, lock, blockCap and observers. Nothing
	// else takes it; Observers run under it. A decision waits for it at
	// most lockWait (lock.go).
	mu        pathLock
	q         queue // decisions waiting for the next group (group.go); its own lock
	blocks    *index
	guard     Guard
	gcfg      GuardConfig
	lock      lockdown
	blockCap  senderCap
	observers []Observer
}

// New loads the store's blocks and lockdown into memory and reads the
// host's addresses. It does not touch the kernel: Reassert does.
func New(opts Options, g GuardConfig) (*Path, error) {
	if opts.Kernel == nil || opts.Store == nil || opts.Record == nil {
		return nil, errors.New("enforce: kernel, store and record are required")
	}
	dp := &Path{kernel: opts.Kernel, store: opts.Store, rec: opts.Record, log: opts.Log, now: opts.Now,
		hostAddrs: opts.HostAddrs, kernelError: opts.OnKernelError, bulk: opts.OnBulk, crash: opts.CrashAfterCommit,
		blocks: newIndex(), gcfg: g, mu: newPathLock(), lockWait: opts.LockWait}
	if dp.lockWait <= 0 {
		dp.lockWait = DefaultLockWait
	}
	if dp.log == nil {
		dp.log = slog.Default()
	}
	if dp.now == nil {
		dp.now = time.Now
	}
	if dp.hostAddrs == nil {
		dp.hostAddrs = HostAddrs
	}
	if dp.kernelError == nil {
		dp.kernelError = func(error) {}
	}
	if dp.bulk == nil {
		dp.bulk = func() {}
	}
	capCfg := opts.SenderCap
	if capCfg == nil {
		capCfg = func() response.BlockCap { return response.BlockCap{} }
	}
	dp.blockCap = senderCap{cfg: capCfg, audit: dp.rec.Audit, log: dp.log}
	dp.lock = lockdown{dp: dp}
	l, err := load(dp.store, dp.blocks, dp.log, dp.now())
	if err != nil {
		return nil, err
	}
	dp.lock.cur = l
	dp.refreshGuard()
	return dp, nil
}

// load reads the store's blocks into x, and returns its lockdown if it is
// still in force.
func load(st *store.Store, x *index, log *slog.Logger, now time.Time) (*store.Lockdown, error) {
	err := st.Load(func(b store.Block) {
		x.put(b.Prefix, entry{created: b.Created, until: b.Until, dec: b.Decision})
	}, func(dr store.Decision) {
		x.addDecision(dr)
	})
	if err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	l, err := st.Lockdown()
	if err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	log.Info("store loaded", "blocks", x.len(), "expired", x.countExpired(now.UnixMilli()))
	if l != nil && l.Until.After(now) {
		return l, nil
	}
	return nil, nil
}

// Observe registers an observer for every enforced decision.
func (dp *Path) Observe(o Observer) {
	dp.mu.Lock()
	defer dp.mu.Unlock()
	dp.observers = append(dp.observers, o)
}

// refreshGuard rebuilds the guard from its config and the host's
// addresses. Caller holds dp.mu or runs before the Path is shared.
func (dp *Path) refreshGuard() {
	own, err := dp.hostAddrs()
	if err != nil {
		dp.log.Warn("cannot read host addresses; guard keeps the old list", "err", err)
		own = dp.guard.Own
	}
	dp.guard = Guard{Allow: dp.gcfg.Allow, Own: own, MinV4: dp.gcfg.MinV4, MinV6: dp.gcfg.MinV6}
	dp.own.Store(&own)
	dp.syncCarves()
}

// Own is the host's own addresses as the guard last read them (a
// snapshot: it never waits for the path).
func (dp *Path) Own() []netip.Addr { return slices.Clone(*dp.own.Load()) }

// Configure switches the guard to a new config (reload) and the kernel to
// its allowlist. It returns how many active blocks overlap the new
// allowlist, and names one. On error nothing changed.
// It waits for another change at most LockWait (busy) or until ctx ends.
func (dp *Path) Configure(ctx context.Context, g GuardConfig) (overlapping int, example string, err error) {
	if err := dp.mu.lockWithin(ctx, dp.lockWait); err != nil {
		return 0, "", err
	}
	defer dp.mu.Unlock()
	if err := dp.kernel.SetAllow(g.Allow); err != nil {
		return 0, "", fmt.Errorf("allowlist: %w", err)
	}
	dp.gcfg = g
	dp.refreshGuard()
	n, ex := dp.blocks.overlappingAny(g.Allow)
	return n, ex, nil
}

// overlappingAny counts the blocks that overlap any of allow, and names
// the first in text order.
func (x *index) overlappingAny(allow []netip.Prefix) (int, string) {
	if len(allow) == 0 {
		return 0, ""
	}
	n, example := 0, ""
	for q := range x.m.all() {
		for _, a := range allow {
			if a.Overlaps(q) {
				if n == 0 || api.FormatTarget(q) < example {
					example = api.FormatTarget(q)
				}
				n++
				break
			}
		}
	}
	return n, example
}

// state is what observers see. Caller holds dp.mu.
func (dp *Path) state() State {
	st := State{Lockdown: dp.lock.state()}
	st.Blocks4, st.Blocks6 = dp.blocks.familyCounts()
	if dp.lock.cur != nil {
		st.LockdownID = dp.lock.cur.ID
	}
	return st
}

// Stats are the path's counts and lockdown, from memory. Like a decision,
// it waits for another change at most LockWait (busy) or until ctx ends.
func (dp *Path) Stats(ctx context.Context) (Stats, error) {
	if err := dp.mu.lockWithin(ctx, dp.lockWait); err != nil {
		return Stats{}, err
	}
	defer dp.mu.Unlock()
	st := Stats{Active: dp.blocks.len() - dp.blocks.countExpired(dp.now().UnixMilli()), Decisions: len(dp.blocks.decs),
		Lockdown: dp.lock.state()}
	st.Blocks4, st.Blocks6 = dp.blocks.familyCounts()
	return st, nil
}

// CurrentLockdown is a copy of the stored lockdown, in force or expired;
// nil: none. It waits for another change at most LockWait (busy) or until
// ctx ends.
func (dp *Path) CurrentLockdown(ctx context.Context) (*store.Lockdown, error) {
	if err := dp.mu.lockWithin(ctx, dp.lockWait); err != nil {
		return nil, err
	}
	defer dp.mu.Unlock()
	if dp.lock.cur == nil {
		return nil, nil
	}
	l := *dp.lock.cur
	l.Allow = slices.Clone(l.Allow)
	return &l, nil
}

// CapStatus is the sender block cap's state for op status; nil when the
// path stays busy for LockWait.
func (dp *Path) CapStatus() *api.BlockCapStatus {
	if dp.mu.lockWithin(context.Background(), dp.lockWait) != nil {
		return nil
	}
	defer dp.mu.Unlock()
	return dp.blockCap.status(dp.now())
}

// Blocks lists the active blocks in address order, from memory. It waits
// for another change at most LockWait (busy) or until ctx ends.
func (dp *Path) Blocks(ctx context.Context) ([]api.BlockInfo, error) {
	if err := dp.mu.lockWithin(ctx, dp.lockWait); err != nil {
		return nil, err
	}
	defer dp.mu.Unlock()
	ps := dp.blocks.sorted(dp.now().UnixMilli())
	out := make([]api.BlockInfo, len(ps))
	for i, q := range ps {
		e, _ := dp.blocks.get(q)
		dr := dp.blocks.decision(e.dec)
		bi := api.BlockInfo{Target: api.FormatTarget(q), ID: dr.ID, Created: time.UnixMilli(e.created).UTC(),
			Reason: dr.Reason, Source: dr.Source, Origin: dr.Origin, Rule: dr.Rule, Sender: dr.Sender}
		if e.until != 0 {
			bi.Until = time.UnixMilli(e.until).UTC()
		}
		out[i] = bi
	}
	return out, nil
}

// Block is one active block as Active reports it.
type Block struct {
	Prefix   netip.Prefix
	Until    time.Time      // zero: permanent
	Decision store.Decision // the decision that made it (its text; the cause stays in the store)
}

// Active copies the active blocks out with a short hold of the lock (a
// copy, no sort), then sorts them outside it, in address order.
func (dp *Path) Active() []Block {
	dp.mu.Lock()
	nowMs := dp.now().UnixMilli()
	out := make([]Block, 0, dp.blocks.len())
	for q, e := range dp.blocks.m.all() {
		if e.expired(nowMs) {
			continue
		}
		b := Block{Prefix: q, Decision: dp.blocks.decision(e.dec)}
		if e.until != 0 {
			b.Until = time.UnixMilli(e.until)
		}
		out = append(out, b)
	}
	dp.mu.Unlock()
	slices.SortFunc(out, func(a, b Block) int {
		return cmp.Or(a.Prefix.Addr().Compare(b.Prefix.Addr()), cmp.Compare(a.Prefix.Bits(), b.Prefix.Bits()))
	})
	return out
}
