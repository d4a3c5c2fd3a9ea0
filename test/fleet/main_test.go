// Package fleet_test runs three parryd processes in three network
// namespaces that share a NATS JetStream server in a fourth, and checks
// with real packets that one host's block protects the others.
//
// Topology (all inside namespaces the test creates; documentation range only):
//
//	a 192.0.2.1 ─┐
//	b 192.0.2.2 ─┤  hub: bridge br0 192.0.2.254, nats-server :4222
//	c 192.0.2.3 ─┤
//	x 192.0.2.100-104 ─┘  (the "attacker": pings a, b and c)
//
// The nats-server runs as a child process (this test binary re-executed in
// helper mode) inside the hub namespace, so it can be stopped and started
// again with its store; the namespaces cannot reach the host's loopback.
package fleet_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nkeys"

	"github.com/parryhq/parry/test/parrybin"
)

const (
	envNATSD = "PARRY_FLEET_TEST_NATSD" // helper mode: run a nats-server
	envForge = "PARRY_FLEET_TEST_FORGE" // helper mode: try to forge decisions
)

func TestMain(m *testing.M) {
	switch {
	case os.Getenv(envNATSD) != "":
		os.Exit(natsdMain())
	case os.Getenv(envForge) != "":
		os.Exit(forgeMain())
	}
	code := m.Run()
	parrybin.Remove()
	os.Exit(code)
}

// natsdMain runs a nats-server with JetStream: listen address, store dir
// and the allowed user nkeys come from the environment. It prints READY once
// it accepts connections and shuts down cleanly on SIGTERM.
func natsdMain() int {
	host, port, ok := strings.Cut(os.Getenv("PARRY_NATSD_LISTEN"), ":")
	if !ok {
		fmt.Fprintln(os.Stderr, "PARRY_NATSD_LISTEN must be host:port")
		return 2
	}
	var p int
	fmt.Sscanf(port, "%d", &p)
	opts := &server.Options{
		ServerName: "hub", Host: host, Port: p, JetStream: true,
		StoreDir: os.Getenv("PARRY_NATSD_STORE"), NoSigs: true, NoLog: true,
	}
	for _, k := range strings.Fields(os.Getenv("PARRY_NATSD_USERS")) {
		opts.Nkeys = append(opts.Nkeys, &server.NkeyUser{Nkey: k})
	}
	s, err := server.NewServer(opts)
	if err != nil {
		fmt.Fprintln(os.Stderr, "nats server:", err)
		return 1
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	go s.Start()
	if !s.ReadyForConnections(20 * time.Second) {
		fmt.Fprintln(os.Stderr, "nats server not ready")
		return 1
	}
	fmt.Println("READY")
	<-ctx.Done()
	s.Shutdown()
	s.WaitForShutdown()
	return 0
}

// forgeMain plays an attacker on the fleet's network. It first connects
// without credentials (the server must refuse), then with an nkey the
// server accepts but no agent trusts, and publishes a decision that claims
// to come from host "a". It prints one JSON line with what happened.
func forgeMain() int {
	url, target := os.Getenv("PARRY_FORGE_URL"), os.Getenv("PARRY_FORGE_TARGET")
	res := map[string]string{}
	if nc, err := nats.Connect(url, nats.Timeout(5*time.Second)); err != nil {
		res["anonymous"] = err.Error()
	} else {
		res["anonymous"] = "connected"
		nc.Close()
	}
	kp, err := nkeys.FromSeed([]byte(os.Getenv("PARRY_FORGE_SEED")))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	pub, _ := kp.PublicKey()
	nc, err := nats.Connect(url, nats.Nkey(pub, kp.Sign), nats.Timeout(5*time.Second))
	if err != nil {
		res["untrusted"] = "connect: " + err.Error()
	} else {
		defer nc.Close()
		js, _ := jetstream.New(nc)
		now := time.Now().UTC()
		body, _ := json.Marshal(map[string]any{
			"v": 1, "id": "forged-1", "origin": "a", "action": "block", "target": target + "/32",
			"until": now.Add(time.Hour), "issued": now, "reason": "forged",
		})
		sig, _ := kp.Sign(body)
		m := nats.NewMsg("parry.d.4." + strings.ReplaceAll(target, ".", "-") + "_32")
		m.Data = body
		m.Header.Set("Parry-Sig", fmt.Sprintf("%x", sig)) // not even the right encoding; the key is wrong anyway
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if _, err := js.PublishMsg(ctx, m); err != nil {
			res["untrusted"] = "publish: " + err.Error()
		} else {
			res["untrusted"] = "stored"
		}
	}
	_ = json.NewEncoder(os.Stdout).Encode(res)
	return 0
}
