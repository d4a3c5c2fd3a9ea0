package sources

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/parryhq/parry/response"
)

// memStore is the store's key/value space.
type memStore struct {
	mu sync.Mutex
	m  map[string][]byte
}

func (s *memStore) Get(k string) ([]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.m[k], nil
}

func (s *memStore) Put(k string, v []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.m[k] = append([]byte(nil), v...)
	return nil
}

// policy is a real response engine: a new one per daemon life, as parryd's
// counters are in memory only.
type policy struct {
	eng       *response.Engine
	mu        sync.Mutex
	decisions []response.Decision
	signals   int
	replayed  int
}

func newPolicy(t *testing.T) *policy {
	eng, err := response.New(response.Config{}, response.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return &policy{eng: eng}
}

func (p *policy) Signal(sig response.Signal) []response.Decision {
	res, err := p.eng.Handle(sig)
	if err != nil {
		panic(err)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.signals++
	return res.Decisions
}

func (p *policy) Enforce(_ context.Context, decs []response.Decision) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.decisions = append(p.decisions, decs...)
}

func (p *policy) Replay(sig response.Signal, at time.Time) {
	if err := p.eng.Replay(sig, at); err != nil {
		panic(err)
	}
	p.mu.Lock()
	p.replayed++
	p.mu.Unlock()
}

func (p *policy) counts() (signals, replayed, decisions int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.signals, p.replayed, len(p.decisions)
}

// life is one run of the daemon's sources.
type life struct {
	m      *Manager
	p      *policy
	cancel func()
	done   chan struct{}
}

func start(t *testing.T, cfg Config, st *memStore) *life {
	t.Helper()
	p := newPolicy(t)
	m, err := New(cfg, Options{Handler: p, Store: st, Window: func() time.Duration { return p.eng.LongestWindow() },
		Poll: 20 * time.Millisecond, SaveEvery: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	l := &life{m: m, p: p, cancel: cancel, done: make(chan struct{})}
	go func() { m.Run(ctx); close(l.done) }()
	t.Cleanup(l.stop)
	return l
}

func (l *life) stop() {
	l.cancel()
	<-l.done
}

func waitFor(t *testing.T, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func appendLines(t *testing.T, path string, lines ...string) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, l := range lines {
		if _, err := fmt.Fprintln(f, l); err != nil {
			t.Fatal(err)
		}
	}
}

const failure = "Failed password for root from 203.0.113.9 port 5555 ssh2"

func fileConfig(path string) Config {
	off := false
	return Config{Journal: JournalConfig{Enabled: &off}, Files: []FileConfig{{Path: path, Detectors: []string{"sshd"}}}}
}

// TestRestartBlocksAtNth: a burst of 5 failures split by a restart after
// the 3rd blocks at the 5th, not before (the 3 read back are counted once
// more in the new life's counters, never decided) and not after (none is
// lost). A restart after the block reads the 5 back without deciding
// again, and the 6th failure counts 1.
func TestRestartBlocksAtNth(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sshd.log")
	appendLines(t, path, "Server listening on 0.0.0.0 port 22.")
	st := &memStore{m: map[string][]byte{}}
	cfg := fileConfig(path)

	l1 := start(t, cfg, st)
	waitFor(t, "the file open", func() bool { return l1.m.Status()[0].Available })
	appendLines(t, path, failure, "Accepted password for alice from 192.0.2.7 port 4000 ssh2", failure, failure)
	waitFor(t, "3 signals", func() bool { s, _, _ := l1.p.counts(); return s == 3 })
	l1.stop()

	l2 := start(t, cfg, st)
	waitFor(t, "3 read back", func() bool { _, r, _ := l2.p.counts(); return r == 3 })
	appendLines(t, path, failure)
	waitFor(t, "the 4th", func() bool { s, _, _ := l2.p.counts(); return s == 1 })
	if _, _, d := l2.p.counts(); d != 0 {
		t.Fatalf("blocked at the 4th failure")
	}
	appendLines(t, path, failure)
	waitFor(t, "the 5th", func() bool { s, _, _ := l2.p.counts(); return s == 2 })
	if _, _, d := l2.p.counts(); d != 1 {
		t.Fatalf("%d decisions at the 5th failure, want 1", d)
	}
	st2 := l2.m.Status()[0]
	if st2.Replayed != 4 || st2.Decisions != 1 { // 3 failures and the accepted line
		t.Errorf("status: replayed %d, decisions %d; want 4, 1", st2.Replayed, st2.Decisions)
	}
	l2.stop()

	l3 := start(t, cfg, st)
	waitFor(t, "5 read back", func() bool { _, r, _ := l3.p.counts(); return r == 5 })
	appendLines(t, path, failure)
	waitFor(t, "the 6th", func() bool { s, _, _ := l3.p.counts(); return s == 1 })
	if _, _, d := l3.p.counts(); d != 0 {
		t.Fatalf("the 5 failures read back were decided again")
	}
	if _, ok := l3.p.eng.Offender(netip.MustParseAddr("203.0.113.9")); ok {
		t.Fatalf("reading back recorded an offence")
	}
}

// stuckPolicy holds Enforce until released.
type stuckPolicy struct {
	*policy
	entered chan struct{}
	release chan struct{}
}

func (p stuckPolicy) Enforce(ctx context.Context, decs []response.Decision) {
	p.entered <- struct{}{}
	<-p.release
	p.policy.Enforce(ctx, decs)
}

// TestPositionWaitsForEnforcement: while a line's decision is not yet
// enforced, the saved position stays before that line (a crash then reads
// it again as new, and the block is not lost); once enforced, it moves past.
func TestPositionWaitsForEnforcement(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sshd.log")
	appendLines(t, path, "Server listening on 0.0.0.0 port 22.")
	st := &memStore{m: map[string][]byte{}}
	p := stuckPolicy{policy: newPolicy(t), entered: make(chan struct{}), release: make(chan struct{})}
	m, err := New(fileConfig(path), Options{Handler: p, Store: st, Window: func() time.Duration { return p.eng.LongestWindow() },
		Poll: 20 * time.Millisecond, SaveEvery: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { m.Run(ctx); close(done) }()
	var once sync.Once
	release := func() { once.Do(func() { close(p.release) }) }
	defer func() { release(); cancel(); <-done }()
	waitFor(t, "the file open", func() bool { return m.Status()[0].Available })
	appendLines(t, path, failure, failure, failure, failure)
	waitFor(t, "4 failures handled and saved", func() bool { return savedOffset(t, st, path) == fileSize(t, path) })
	before := fileSize(t, path)
	appendLines(t, path, failure, "Accepted password for alice from 192.0.2.7 port 4000 ssh2")
	<-p.entered                                                                              // the 5th failure's block is at the enforcer
	waitFor(t, "the line after it handled", func() bool { return m.Status()[0].Lines == 6 }) // a first start reads from the end
	r := m.runners[0]
	r.mu.Lock()
	r.dirty = true
	r.mu.Unlock()
	r.save()
	if got := savedOffset(t, st, path); got != before {
		t.Fatalf("saved offset %d while the block waits, want %d (before the 5th failure)", got, before)
	}
	release()
	waitFor(t, "the position past both lines once enforced", func() bool { return savedOffset(t, st, path) == fileSize(t, path) })
}

func savedOffset(t *testing.T, st *memStore, path string) int64 {
	b, _ := st.Get("sources/" + path + "/position")
	if len(b) == 0 {
		return -1
	}
	var rec record
	if err := json.Unmarshal(b, &rec); err != nil {
		t.Fatal(err)
	}
	if rec.Pos.File == nil {
		return -1
	}
	return rec.Pos.File.Offset
}

func fileSize(t *testing.T, path string) int64 {
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Size()
}
