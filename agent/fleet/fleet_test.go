package fleet

import (
	"context"
	"errors"
	"fmt"
	"github.com/parryhq/parry/agent/api"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nkeys"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/parryhq/parry/response"
)

func TestBlockReachesTheFleetButNotItsOrigin(t *testing.T) {
	n := startNATS(t, nil)
	a, recA := startAgent(t, n.URL, "a", nil)
	_, recB := startAgent(t, n.URL, "b", nil)
	_, recC := startAgent(t, n.URL, "c", nil)

	until := time.Now().Add(time.Hour).Truncate(time.Second)
	a.Publish(block("d1", until, "203.0.113.7/32", "2001:db8:bad::/48"))
	for name, rec := range map[string]*recorder{"b": recB, "c": recC} {
		eventually(t, 10*time.Second, name+" applies both targets", func() bool { return len(rec.blocked()) == 2 })
		got := rec.blocked()[netip.MustParsePrefix("203.0.113.7/32")]
		if got.Origin != "a" || got.Source != "fleet" || !got.Until.Equal(until) || got.Action != response.ActionBlock || (got.ID != "d1#0" && got.ID != "d1") {
			t.Errorf("%s applied %+v; want origin a, source fleet, until %v, id d1#0 (or d1 when merged)", name, got, until)
		}
	}
	eventually(t, 10*time.Second, "a sees its own two entries come back", func() bool { return a.Status().Echoes == 2 })
	if got := recA.all(); len(got) != 0 {
		t.Errorf("origin applied its own decision back: %+v", got)
	}

	a.Publish(unblock("d2", "203.0.113.7/32"))
	eventually(t, 10*time.Second, "unblock reaches b", func() bool { return len(recB.blocked()) == 1 })
	if st := a.Status(); st.Published != 3 || !st.Connected || !st.CaughtUp {
		t.Errorf("status of a = %+v; want 3 published, connected, caught up", st)
	}
}

func TestLockdownsAndRemoteDecisionsStayLocal(t *testing.T) {
	n := startNATS(t, nil)
	a, _ := startAgent(t, n.URL, "a", nil)
	_, recB := startAgent(t, n.URL, "b", nil)
	a.Publish(response.Decision{ID: "l1", Action: response.ActionLockdown, Until: time.Now().Add(time.Hour)})
	remote := block("r1", time.Now().Add(time.Hour), "198.51.100.9/32")
	remote.Origin = "z"
	a.Publish(remote)
	dry := block("dry", time.Now().Add(time.Hour), "198.51.100.10/32")
	dry.DryRun = true
	a.Publish(dry)
	a.Publish(block("marker", time.Now().Add(time.Hour), "198.51.100.11/32"))
	eventually(t, 10*time.Second, "marker reaches b", func() bool { return len(recB.all()) >= 1 })
	if got := recB.all(); len(got) != 1 || got[0].ID != "marker" {
		t.Errorf("b applied %+v; want only the marker block", got)
	}
}

func TestCatchUpBeforeReady(t *testing.T) {
	n := startNATS(t, nil)
	a, _ := startAgent(t, n.URL, "a", nil)
	until := time.Now().Add(time.Hour)
	const N = 200
	for i := range N {
		a.Publish(block(fmt.Sprintf("b%d", i), until, fmt.Sprintf("198.51.100.%d/32", i)))
	}
	a.Publish(unblock("u0", "198.51.100.0/32"))
	a.Publish(block("short", time.Now().Add(1500*time.Millisecond), "203.0.113.200/32"))
	eventually(t, 10*time.Second, "a's queue drains", func() bool { return a.Status().Queued == 0 })

	// A newcomer has everything active applied when Start returns.
	_, recD := startAgent(t, n.URL, "d", nil)
	if got := len(recD.blocked()); got != N-1+1 {
		t.Fatalf("newcomer had %d active blocks when ready; want %d", got, N)
	}
	if _, ok := recD.blocked()[netip.MustParsePrefix("198.51.100.0/32")]; ok {
		t.Error("newcomer holds a block that was lifted")
	}

	// The short block vanishes from the stream at its expiry (per-message
	// TTL), so a later newcomer never sees it.
	eventually(t, 10*time.Second, "expired block leaves the stream", func() bool {
		return streamMsgs(t, n, "PARRY_DECISIONS") == N // N-1 blocks + 1 tombstone
	})
	_, recE := startAgent(t, n.URL, "e", nil)
	if _, ok := recE.blocked()[netip.MustParsePrefix("203.0.113.200/32")]; ok {
		t.Error("late newcomer applied an expired block")
	}
	if got := len(recE.blocked()); got != N-1 {
		t.Errorf("late newcomer has %d blocks; want %d", got, N-1)
	}
}

func streamMsgs(t testing.TB, n *natsd, stream string) uint64 {
	t.Helper()
	nc, err := nats.Connect(n.URL)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s, err := js.Stream(ctx, stream)
	if err != nil {
		t.Fatalf("stream %s: %v", stream, err)
	}
	return s.CachedInfo().State.Msgs
}

func TestDuplicatesAreAppliedOnce(t *testing.T) {
	n := startNATS(t, nil)
	a, _ := startAgent(t, n.URL, "a", nil)
	b, recB := startAgent(t, n.URL, "b", nil)
	d := block("same", time.Now().Add(time.Hour), "192.0.2.50/32")
	a.Publish(d)
	a.Publish(d) // JetStream drops this one (Nats-Msg-Id)
	eventually(t, 10*time.Second, "b applies", func() bool { return len(recB.all()) == 1 })

	// The same entry stored again without a message id still reaches b
	// once: b remembers the ids it applied.
	nc, err := nats.Connect(n.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	body, _, _ := encode(entries(d, "a", time.Now())[0], nil)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := js.Publish(ctx, "parry.d.4.192-0-2-50_32", body); err != nil {
		t.Fatal(err)
	}
	a.Publish(block("marker", time.Now().Add(time.Hour), "192.0.2.51/32"))
	eventually(t, 10*time.Second, "marker reaches b", func() bool { return len(recB.blocked()) == 2 })
	if got := len(recB.all()); got != 2 {
		t.Errorf("b applied %d decisions; want 2 (the duplicate dropped)", got)
	}
	if st := b.Status(); st.Duplicates != 1 {
		t.Errorf("b duplicates = %d; want 1", st.Duplicates)
	}
}

func TestRefusedByLocalGuardOnOneHostOnly(t *testing.T) {
	n := startNATS(t, nil)
	a, _ := startAgent(t, n.URL, "a", nil)
	b, recB := startAgent(t, n.URL, "b", nil)
	c, recC := startAgent(t, n.URL, "c", nil)
	recC.mu.Lock()
	recC.allow = []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24")}
	recC.mu.Unlock()
	a.Publish(block("g", time.Now().Add(time.Hour), "192.0.2.9/32"))
	eventually(t, 10*time.Second, "b applies", func() bool { return len(recB.blocked()) == 1 })
	eventually(t, 10*time.Second, "c refuses", func() bool { return c.Status().Refused == 1 })
	if len(recC.blocked()) != 0 || b.Status().Refused != 0 {
		t.Errorf("c blocked %v, b refused %d; want c none, b 0", recC.blocked(), b.Status().Refused)
	}
}

func TestQueueWhileDisconnectedIsBoundedAndFlushedOnReconnect(t *testing.T) {
	n := startNATS(t, nil)
	small := func(c *Config) { c.QueueSize = 10 }
	a, _ := startAgent(t, n.URL, "a", small)
	_, recB := startAgent(t, n.URL, "b", nil)
	a.Publish(block("before", time.Now().Add(time.Hour), "203.0.113.1/32"))
	eventually(t, 10*time.Second, "b applies the first block", func() bool { return len(recB.blocked()) == 1 })

	n.Stop()
	eventually(t, 10*time.Second, "a notices the outage", func() bool { return !a.Status().Connected })
	until := time.Now().Add(time.Hour)
	for i := range 15 {
		a.Publish(block(fmt.Sprintf("q%d", i), until, fmt.Sprintf("198.51.100.%d/32", i)))
	}
	if st := a.Status(); st.Queued != 10 || st.Dropped != 5 {
		t.Fatalf("while disconnected: queued %d dropped %d; want 10 and 5", st.Queued, st.Dropped)
	}

	n.Start(t)
	eventually(t, 15*time.Second, "queue drains after reconnect", func() bool { return a.Status().Queued == 0 })
	eventually(t, 15*time.Second, "b gets the ten newest", func() bool { return len(recB.blocked()) == 11 })
	for i := range 15 {
		_, ok := recB.blocked()[netip.MustParsePrefix(fmt.Sprintf("198.51.100.%d/32", i))]
		if ok != (i >= 5) {
			t.Errorf("198.51.100.%d: applied=%v; want %v (oldest five dropped)", i, ok, i >= 5)
		}
	}
}

func TestServerRestartLosesNothing(t *testing.T) {
	n := startNATS(t, nil)
	a, _ := startAgent(t, n.URL, "a", nil)
	for i := range 20 {
		a.Publish(block(fmt.Sprintf("s%d", i), time.Now().Add(time.Hour), fmt.Sprintf("203.0.113.%d/32", i)))
	}
	eventually(t, 10*time.Second, "published", func() bool { return a.Status().Queued == 0 })
	n.Stop()
	n.Start(t)
	_, recC := startAgent(t, n.URL, "c", nil)
	if got := len(recC.blocked()); got != 20 {
		t.Errorf("after a server restart a newcomer caught up on %d blocks; want 20", got)
	}
}

// TestForgedDecisionsRejected runs the server with nkey authentication:
// only the hosts' keys (and one other, authenticated but untrusted, user)
// may connect; the agents trust the hosts' keys only.
func TestForgedDecisionsRejected(t *testing.T) {
	dir := t.TempDir()
	keys := map[string]nkeys.KeyPair{}
	var users []*server.NkeyUser
	for _, name := range []string{"a", "b", "mallory"} {
		kp, err := nkeys.CreateUser()
		if err != nil {
			t.Fatal(err)
		}
		keys[name] = kp
		pub, _ := kp.PublicKey()
		seed, _ := kp.Seed()
		if err := os.WriteFile(filepath.Join(dir, name+".nk"), seed, 0o600); err != nil {
			t.Fatal(err)
		}
		users = append(users, &server.NkeyUser{Nkey: pub})
	}
	n := startNATS(t, func(o *server.Options) { o.Nkeys = users })
	pubA, _ := keys["a"].PublicKey()
	pubB, _ := keys["b"].PublicKey()
	trust := map[string]string{"a": pubA, "b": pubB}
	member := func(name string) func(*Config) {
		return func(c *Config) { c.Credentials = filepath.Join(dir, name+".nk"); c.Trusted = trust }
	}
	a, _ := startAgent(t, n.URL, "a", member("a"))
	b, recB := startAgent(t, n.URL, "b", member("b"))

	// An unauthenticated publisher cannot even connect.
	if nc, err := nats.Connect(n.URL); !errors.Is(err, nats.ErrAuthorization) {
		if nc != nil {
			nc.Close()
		}
		t.Fatalf("anonymous connect: err = %v; want %v", err, nats.ErrAuthorization)
	}

	// An authenticated but untrusted user forges decisions claiming to be a.
	mal, err := nats.Connect(n.URL, nats.Nkey(mustPub(keys["mallory"]), keys["mallory"].Sign))
	if err != nil {
		t.Fatal(err)
	}
	defer mal.Close()
	js, _ := jetstream.New(mal)
	forge := func(origin string, kp nkeys.KeyPair, target string) {
		t.Helper()
		e := entries(block("forged-"+target, time.Now().Add(time.Hour), target), origin, time.Now())[0]
		body, sig, err := encode(e, privKey(kp))
		if err != nil {
			t.Fatal(err)
		}
		m := nats.NewMsg(subjectFor("parry", e.Target))
		m.Data = body
		if sig != "" {
			m.Header.Set(sigHeader, sig)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if _, err := js.PublishMsg(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	forge("a", nil, "198.51.100.1/32")                   // unsigned
	forge("a", keys["mallory"], "198.51.100.2/32")       // signed with the wrong key
	forge("mallory", keys["mallory"], "198.51.100.3/32") // untrusted origin
	eventually(t, 10*time.Second, "b rejects three forgeries", func() bool { return b.Status().Rejected == 3 })
	// a itself rejects all three, the two in its name too: they are not its echoes.
	eventually(t, 10*time.Second, "a rejects three forgeries", func() bool { return a.Status().Rejected == 3 })
	if st := a.Status(); st.Echoes != 0 {
		t.Errorf("a counted %d forgeries as its own echoes", st.Echoes)
	}

	a.Publish(block("real", time.Now().Add(time.Hour), "198.51.100.4/32"))
	eventually(t, 10*time.Second, "b applies the genuine block", func() bool { return len(recB.all()) == 1 })
	if got := recB.all(); got[0].ID != "real" {
		t.Errorf("b applied %+v; want only the genuine block", got)
	}
}

func mustPub(kp nkeys.KeyPair) string {
	pub, err := kp.PublicKey()
	if err != nil {
		panic(err)
	}
	return pub
}

func TestStartWithoutServerDoesNotBlockLocalEnforcement(t *testing.T) {
	n := startNATS(t, nil)
	url := n.URL
	n.Stop()
	a, _ := startAgent(t, url, "a", func(c *Config) { c.CatchupTimeout = api.Duration(200 * time.Millisecond) })
	if st := a.Status(); st.Connected || st.CaughtUp {
		t.Fatalf("status with no server = %+v; want disconnected, not caught up", st)
	}
	a.Publish(block("offline", time.Now().Add(time.Hour), "203.0.113.9/32"))
	n.Start(t)
	select {
	case <-a.CaughtUp():
	case <-time.After(15 * time.Second):
		t.Fatal("no catch-up within 15s of the server starting")
	}
	_, recB := startAgent(t, url, "b", nil)
	eventually(t, 15*time.Second, "the queued block reaches b", func() bool { return len(recB.blocked()) == 1 })
}

// TestResyncRepublishesWhatTheStreamLacks: an agent restarted while NATS was
// away lost its queue; once connected and caught up it republishes its own
// active blocks the stream has nothing about, and leaves alone a target the
// fleet already decided on.
func TestResyncRepublishesWhatTheStreamLacks(t *testing.T) {
	n := startNATS(t, nil)
	b, recB := startAgent(t, n.URL, "b", nil)
	b.Publish(block("b-z", time.Now().Add(time.Hour), "203.0.113.30/32"))
	eventually(t, 10*time.Second, "b's block stored", func() bool { return b.Status().Echoes == 1 })

	until := time.Now().Add(time.Hour)
	local := []response.Decision{
		block("a-x", until, "203.0.113.10/32", "203.0.113.11/32"),
		block("a-z", until, "203.0.113.30/32"), // the fleet already has b's decision
		unblock("a-u", "203.0.113.40/32"),      // not a block: never resynced
	}
	rec := &recorder{}
	cfg := Config{Servers: []string{n.URL}, Name: "a", CatchupTimeout: api.Duration(10 * time.Second)}
	a, err := New(cfg, rec, Options{Logger: testLogger(), Local: func(context.Context) ([]response.Decision, error) { return local, nil }})
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = a.Close(context.Background()) })
	eventually(t, 10*time.Second, "b receives a's two lost blocks", func() bool { return len(recB.all()) == 2 })
	for _, d := range recB.all() {
		if d.Origin != "a" || d.Targets[0].Addr().String() == "203.0.113.30" {
			t.Errorf("b applied %+v; want only a's blocks of .10 and .11", d)
		}
	}
}

func TestResyncAfterQueueOverflow(t *testing.T) {
	n := startNATS(t, nil)
	_, recB := startAgent(t, n.URL, "b", nil)
	var (
		mu    sync.Mutex
		local []response.Decision
	)
	rec := &recorder{}
	cfg := Config{Servers: []string{n.URL}, Name: "a", QueueSize: 2}
	a, err := New(cfg, rec, Options{
		Logger: testLogger(),
		Local: func(context.Context) ([]response.Decision, error) {
			mu.Lock()
			defer mu.Unlock()
			return slices.Clone(local), nil
		},
		NATSOptions: []nats.Option{nats.ReconnectWait(50 * time.Millisecond)},
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = a.Close(context.Background()) })

	n.Stop()
	eventually(t, 10*time.Second, "a notices the outage", func() bool { return !a.Status().Connected })
	for i := range 5 {
		d := block(fmt.Sprintf("o%d", i), time.Now().Add(time.Hour), fmt.Sprintf("198.51.100.%d/32", i))
		mu.Lock()
		local = append(local, d) // the agent's store keeps every one
		mu.Unlock()
		a.Publish(d)
	}
	if st := a.Status(); st.Dropped != 3 {
		t.Fatalf("dropped %d; want 3", st.Dropped)
	}
	n.Start(t)
	eventually(t, 15*time.Second, "b gets all five after the resync", func() bool { return len(recB.blocked()) == 5 })
}

func TestMetricsFromStatus(t *testing.T) {
	n := startNATS(t, nil)
	a, _ := startAgent(t, n.URL, "a", nil)
	a.Publish(block("m", time.Now().Add(time.Hour), "203.0.113.77/32"))
	eventually(t, 10*time.Second, "echo", func() bool { return a.Status().Echoes == 1 })
	reg := prometheus.NewRegistry()
	if err := reg.Register(a); err != nil {
		t.Fatal(err)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			name := mf.GetName()
			for _, l := range m.GetLabel() {
				name += "/" + l.GetValue()
			}
			if m.GetGauge() != nil {
				got[name] = m.GetGauge().GetValue()
			} else {
				got[name] = m.GetCounter().GetValue()
			}
		}
	}
	for name, want := range map[string]float64{
		"parry_fleet_connected": 1, "parry_fleet_caught_up": 1, "parry_fleet_queue_length": 0,
		"parry_fleet_entries_total/published": 1, "parry_fleet_entries_total/echo": 1, "parry_fleet_entries_total/rejected": 0,
	} {
		if v, ok := got[name]; !ok || v != want {
			t.Errorf("%s = %v (present %v); want %v", name, v, ok, want)
		}
	}
}
