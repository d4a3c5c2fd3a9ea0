// Package fleet shares parry's block decisions between hosts over NATS
// JetStream. Every local block and unblock is published, one message per
// target, to a stream that keeps only the latest message per target subject
// and lets each block vanish at its expiry (per-message TTL). Every agent
// reads the stream from the latest message of each subject on, so that one
// that starts, restarts or reconnects catches up on the fleet's active
// blocks, and hands each remote decision to the agent's normal enforcement
// path, which guards it like any other.
//
// The package depends on the agent only through Applier, so that it can be
// tested against a real nats-server without a daemon.
package fleet

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nkeys"

	"github.com/parryhq/parry/response"
)

// Applier enforces a remote decision through the agent's normal path (guard,
// store, firewall, audit). The guard may refuse some targets of a block and
// apply the rest: refused says how many. An error means nothing was applied
// (refused or failed); the agent has recorded why.
//
// ApplyRemoteBatch does the same for many decisions in order, sharing the
// agent's store commits and kernel updates; it returns one Result per
// decision.
type Applier interface {
	ApplyRemote(ctx context.Context, d response.Decision) (refused int, err error)
	ApplyRemoteBatch(ctx context.Context, ds []response.Decision) []Result
}

// Result is what the agent did with one remote decision of a batch.
type Result struct {
	Refused int   // targets the guard refused (Err nil: the others were applied)
	Err     error // nothing applied: refused or failed
}

// Options are the injected dependencies of a Fleet.
type Options struct {
	Logger *slog.Logger     // default slog.Default()
	Now    func() time.Time // default time.Now
	// Local lists this host's own active blocks (the agent's store). When
	// set, the fleet republishes the ones the stream lacks once caught up
	// (decisions queued before a restart while NATS was away) and after a
	// reconnect that followed a queue overflow.
	Local func(ctx context.Context) ([]response.Decision, error)
	// NATSOptions are appended to the connection options (tests: short
	// reconnect waits).
	NATSOptions []nats.Option
}

// Fleet is one agent's membership in the fleet.
type Fleet struct {
	cfg     Config
	apply   Applier
	log     *slog.Logger
	now     func() time.Time
	key     ed25519.PrivateKey // signs our entries; nil: unsigned
	trusted map[string]ed25519.PublicKey
	natsOpt []nats.Option

	q    *queue
	seen *idSet

	nc     *nats.Conn
	js     jetstream.JetStream
	cancel context.CancelFunc
	wg     sync.WaitGroup

	caughtUp  chan struct{} // closed once the first catch-up is done
	catchOnce sync.Once
	lastSeq   atomic.Uint64 // stream sequence of the last message applied (or skipped)
	inbox     chan inbound  // checked messages, in stream order, for applyLoop

	mu      sync.Mutex
	lastErr string
	lastAt  time.Time
	known   map[string]known // subject → the latest entry seen in the stream or sent to it
	local   func(context.Context) ([]response.Decision, error)
	resync  chan struct{}
	synced  uint64 // queue drops already covered by a resync
	cons    atomic.Pointer[jetstream.Consumer]

	published, received, applied, refused, rejected, echoes, duplicates, expired atomic.Uint64
}

// New checks cfg (defaults applied from the hostname), loads the
// credentials, and returns a Fleet that is not yet connected: call Start.
func New(cfg Config, apply Applier, opt Options) (*Fleet, error) {
	if !cfg.Enabled() {
		return nil, errors.New("no servers configured")
	}
	if apply == nil {
		return nil, errors.New("nil applier")
	}
	host, _ := os.Hostname()
	cfg = cfg.WithDefaults(host)
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Name == "" {
		return nil, errors.New("name: empty and no hostname to default to")
	}
	f := &Fleet{
		cfg: cfg, apply: apply, log: opt.Logger, now: opt.Now,
		q: newQueue(cfg.QueueSize), seen: newIDSet(1 << 16), inbox: make(chan inbound, 2*maxBatch),
		caughtUp: make(chan struct{}), known: make(map[string]known),
		local: opt.Local, resync: make(chan struct{}, 1),
		trusted: make(map[string]ed25519.PublicKey, len(cfg.Trusted)),
	}
	if f.log == nil {
		f.log = slog.Default()
	}
	f.log = f.log.With("component", "fleet")
	if f.now == nil {
		f.now = time.Now
	}
	for name, key := range cfg.Trusted {
		pub, err := verifyKey(key)
		if err != nil {
			return nil, fmt.Errorf("trusted[%s]: %w", name, err)
		}
		f.trusted[name] = pub
	}
	opts, err := f.connOptions()
	if err != nil {
		return nil, err
	}
	f.natsOpt = append(opts, opt.NATSOptions...)
	return f, nil
}

// connOptions builds the NATS options: credentials, TLS, endless reconnects,
// and the handlers that keep our connection state.
func (f *Fleet) connOptions() ([]nats.Option, error) {
	opts := []nats.Option{
		nats.Name("parryd " + f.cfg.Name),
		nats.RetryOnFailedConnect(true),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(time.Second),
		nats.ReconnectBufSize(-1), // our own queue holds what waits; never buffer blindly
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				f.setErr(fmt.Errorf("disconnected: %w", err))
			}
			f.log.Warn("fleet disconnected; local enforcement goes on, outgoing decisions queue", "err", err)
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) {
			f.log.Info("fleet reconnected", "server", nc.ConnectedUrlRedacted())
			f.q.kick()
			if _, dropped := f.q.len(); dropped > f.syncedDrops() {
				f.requestResync()
			}
		}),
		nats.ConnectHandler(func(nc *nats.Conn) {
			f.log.Info("fleet connected", "server", nc.ConnectedUrlRedacted())
			f.q.kick()
		}),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			f.setErr(err)
			f.log.Warn("fleet connection error", "err", err)
		}),
	}
	if c := f.cfg.Credentials; c != "" {
		raw, err := os.ReadFile(c)
		if err != nil {
			return nil, fmt.Errorf("credentials: %w", err)
		}
		kp, err := nkeys.ParseDecoratedUserNKey(raw)
		if err != nil {
			return nil, fmt.Errorf("credentials: %s: no user nkey seed (SU...): %w", c, err)
		}
		if f.key, err = signingKey(kp); err != nil {
			return nil, fmt.Errorf("credentials: %w", err)
		}
		if strings.Contains(string(raw), "BEGIN NATS USER JWT") {
			opts = append(opts, nats.UserCredentials(c))
		} else {
			pub, err := kp.PublicKey()
			if err != nil {
				return nil, fmt.Errorf("credentials: %w", err)
			}
			opts = append(opts, nats.Nkey(pub, kp.Sign))
		}
		if want, ok := f.cfg.Trusted[f.cfg.Name]; ok {
			if pub, _ := kp.PublicKey(); pub != want {
				return nil, fmt.Errorf("trusted[%s]: %s is not the key in %s (%s)", f.cfg.Name, want, c, pub)
			}
		}
	}
	if f.cfg.TLS.CA != "" {
		opts = append(opts, nats.RootCAs(f.cfg.TLS.CA))
	}
	if f.cfg.TLS.Cert != "" {
		opts = append(opts, nats.ClientCert(f.cfg.TLS.Cert, f.cfg.TLS.Key))
	}
	return opts, nil
}

// Name is this host's name in the fleet.
func (f *Fleet) Name() string { return f.cfg.Name }

// Config is the configuration in use, defaults applied.
func (f *Fleet) Config() Config { return f.cfg }

// Start connects (retrying in the background when NATS is unreachable),
// starts the publisher and the subscriber, and waits for the catch-up on the
// fleet's active decisions, at most CatchupTimeout. It returns nil when the
// wait times out (local enforcement must not wait for the fleet): CaughtUp
// then turns true later.
func (f *Fleet) Start(ctx context.Context) error {
	nc, err := nats.Connect(strings.Join(f.cfg.Servers, ","), f.natsOpt...)
	if err != nil {
		return fmt.Errorf("fleet: connect: %w", err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return fmt.Errorf("fleet: jetstream: %w", err)
	}
	f.nc, f.js = nc, js
	runCtx, cancel := context.WithCancel(context.Background())
	f.cancel = cancel
	f.wg.Add(4)
	go func() { defer f.wg.Done(); f.sendLoop(runCtx) }()
	go func() { defer f.wg.Done(); f.receiveLoop(runCtx) }()
	go func() { defer f.wg.Done(); f.resyncLoop(runCtx) }()
	go func() { defer f.wg.Done(); f.applyLoop(runCtx) }()

	wait, cancelWait := context.WithTimeout(ctx, f.cfg.CatchupTimeout.D())
	defer cancelWait()
	select {
	case <-f.caughtUp:
		f.log.Info("fleet caught up", "stream", f.cfg.Stream, "last_seq", f.lastSeq.Load())
	case <-wait.Done():
		f.log.Warn("fleet not caught up yet; starting anyway, catch-up goes on in the background",
			"waited", f.cfg.CatchupTimeout.D(), "connected", nc.IsConnected())
	}
	return nil
}

// CaughtUp returns a channel closed once the first catch-up is done.
func (f *Fleet) CaughtUp() <-chan struct{} { return f.caughtUp }

// Close stops publishing and receiving and closes the connection, after a
// best-effort flush of the queue bounded by ctx.
func (f *Fleet) Close(ctx context.Context) error {
	if f.nc == nil {
		return nil
	}
	for {
		n, _ := f.q.len()
		if n == 0 || !f.nc.IsConnected() || ctx.Err() != nil {
			break
		}
		select {
		case <-ctx.Done():
		case <-time.After(10 * time.Millisecond):
		}
	}
	f.cancel()
	f.wg.Wait()
	f.nc.Close()
	return nil
}

// Publish queues a local decision for the fleet. It never blocks and never
// fails: blocks and unblocks are queued (the oldest entry is dropped when the
// queue is full); anything else is ignored.
func (f *Fleet) Publish(d response.Decision) {
	now := f.now()
	for _, e := range entries(d, f.cfg.Name, now) {
		f.enqueue(e, now)
	}
}

func (f *Fleet) enqueue(e entry, now time.Time) {
	if f.q.push(f.outMsg(e, now)) {
		f.log.Warn("fleet queue full: dropped the oldest outgoing decision", "queue_size", f.cfg.QueueSize)
	}
}

// outMsg prepares e for the queue and notes it as ours.
func (f *Fleet) outMsg(e entry, now time.Time) outMsg {
	m := outMsg{
		subject: subjectFor(f.cfg.SubjectPrefix, e.Target), msgID: e.ID + "|" + string(e.Action),
		e: e, unblock: e.Action == response.ActionUnblock, until: e.Until,
	}
	if m.unblock {
		m.until = f.tombstoneUntil(m.subject, now)
	}
	f.note(m.subject, e, false)
	return m
}

func (f *Fleet) setErr(err error) {
	f.mu.Lock()
	f.lastErr, f.lastAt = err.Error(), f.now()
	f.mu.Unlock()
}

// known is what the stream holds about one target, as far as we know.
type known struct {
	id     string
	until  time.Time // block expiry (zero: permanent)
	block  bool
	stored bool // read back from the stream (not only queued by us)
}

// note remembers the latest entry about a subject: an unblock's tombstone
// lives as long as the block it lifts, and a resync skips targets the stream
// already has something about.
func (f *Fleet) note(subject string, e entry, stored bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.known) >= 1<<20 { // bounded: forget everything rather than grow
		clear(f.known)
	}
	f.known[subject] = known{id: e.ID, until: e.Until, block: e.Action == response.ActionBlock, stored: stored}
}

// sentByUs reports whether the latest entry we queued about subject has id.
func (f *Fleet) sentByUs(subject, id string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	k, ok := f.known[subject]
	return ok && !k.stored && k.id == id
}

func (f *Fleet) tombstoneUntil(subject string, now time.Time) time.Time {
	f.mu.Lock()
	k, ok := f.known[subject]
	f.mu.Unlock()
	if ok && k.block && !k.until.IsZero() && k.until.Before(now.Add(f.cfg.UnblockTTL.D())) {
		return k.until.Add(time.Minute)
	}
	return now.Add(f.cfg.UnblockTTL.D())
}
