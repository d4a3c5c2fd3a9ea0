package fleet

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"github.com/parryhq/parry/agent/api"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"

	"github.com/parryhq/parry/response"
	"github.com/parryhq/parry/test/netns"
)

// natsd is a real nats-server with JetStream on a temp dir, in process,
// listening on a free port of 127.0.0.1. Stop and Start keep the port and
// the store, like a restarted service.
type natsd struct {
	opts server.Options
	srv  *server.Server
	URL  string
}

func startNATS(t testing.TB, mod func(*server.Options)) *natsd {
	t.Helper()
	n := &natsd{opts: server.Options{
		ServerName: "fleet-test", Host: "127.0.0.1", Port: -1,
		JetStream: true, StoreDir: t.TempDir(), NoLog: true, NoSigs: true,
	}}
	if mod != nil {
		mod(&n.opts)
	}
	n.Start(t)
	n.opts.Port = n.srv.Addr().(*net.TCPAddr).Port
	n.URL = fmt.Sprintf("nats://127.0.0.1:%d", n.opts.Port)
	t.Cleanup(n.Stop)
	return n
}

func (n *natsd) Start(t testing.TB) {
	t.Helper()
	opts := n.opts
	s, err := server.NewServer(&opts)
	if err != nil {
		t.Fatalf("nats server: %v", err)
	}
	go s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats server not ready within 10s")
	}
	n.srv = s
}

func (n *natsd) Stop() {
	if n.srv != nil {
		n.srv.Shutdown()
		n.srv.WaitForShutdown()
		n.srv = nil
	}
}

// recorder is the agent side: it records what it was asked to enforce, and
// refuses targets in its allowlist like the agent's guard.
type recorder struct {
	mu      sync.Mutex
	got     []response.Decision
	allow   []netip.Prefix
	calls   int   // ApplyRemote calls (one per decision)
	batches []int // decisions per ApplyRemoteBatch call
}

var errGuarded = errors.New("target protected by the allowlist")

// ApplyRemote refuses the targets its allowlist covers, like the agent in
// partial mode, and records each applied target as its own decision.
func (r *recorder) ApplyRemote(_ context.Context, d response.Decision) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls++
	refused := 0
	for _, t := range d.Targets {
		if slices.ContainsFunc(r.allow, t.Overlaps) {
			refused++
			continue
		}
		one := d
		one.Targets = []netip.Prefix{t}
		r.got = append(r.got, one)
	}
	if refused == len(d.Targets) {
		return 0, errGuarded
	}
	return refused, nil
}

// ApplyRemoteBatch applies each decision with ApplyRemote and counts the
// batch.
func (r *recorder) ApplyRemoteBatch(ctx context.Context, ds []response.Decision) []Result {
	r.mu.Lock()
	r.batches = append(r.batches, len(ds))
	r.mu.Unlock()
	res := make([]Result, len(ds))
	for i, d := range ds {
		res[i].Refused, res[i].Err = r.ApplyRemote(ctx, d)
	}
	return res
}

func (r *recorder) all() []response.Decision {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]response.Decision(nil), r.got...)
}

// blocked replays what was applied into the set of blocked targets.
func (r *recorder) blocked() map[netip.Prefix]response.Decision {
	out := map[netip.Prefix]response.Decision{}
	for _, d := range r.all() {
		for _, t := range d.Targets {
			if d.Action == response.ActionBlock {
				out[t] = d
			} else {
				delete(out, t)
			}
		}
	}
	return out
}

func testLogger() *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// startAgent starts a fleet member named name on url with a recorder.
func startAgent(t testing.TB, url, name string, mod func(*Config)) (*Fleet, *recorder) {
	t.Helper()
	rec := &recorder{}
	cfg := Config{Servers: []string{url}, Name: name, CatchupTimeout: api.Duration(10 * time.Second)}
	if mod != nil {
		mod(&cfg)
	}
	f, err := New(cfg, rec, Options{Logger: testLogger().With("host", name), NATSOptions: []nats.Option{nats.ReconnectWait(50 * time.Millisecond)}})
	if err != nil {
		t.Fatalf("fleet.New %s: %v", name, err)
	}
	if err := f.Start(context.Background()); err != nil {
		t.Fatalf("fleet.Start %s: %v", name, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = f.Close(ctx)
	})
	return f, rec
}

func block(id string, until time.Time, targets ...string) response.Decision {
	d := response.Decision{ID: id, Action: response.ActionBlock, Until: until, Reason: "test", Source: "cli"}
	for _, s := range targets {
		d.Targets = append(d.Targets, netip.MustParsePrefix(s))
	}
	return d
}

func unblock(id string, targets ...string) response.Decision {
	d := block(id, time.Time{}, targets...)
	d.Action = response.ActionUnblock
	return d
}

var eventually = netns.Eventually

// privKey is the signing key of kp; nil for a nil kp (unsigned).
func privKey(kp nkeys.KeyPair) ed25519.PrivateKey {
	if kp == nil {
		return nil
	}
	k, err := signingKey(kp)
	if err != nil {
		panic(err)
	}
	return k
}
