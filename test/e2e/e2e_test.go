package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/parryhq/parry/test/netns"
)

const port = 8080

func TestBlockDropsPacketsAndUnblockRestores(t *testing.T) {
	p := netns.NewPair(t)
	p.Host.ServeTCP(t, port)
	d := newDaemon(t, p.Host)
	d.Start()
	if !p.Peer.Ping(p.HostV4) || !p.Peer.CanConnect(p.HostV4, port) || !p.Peer.CanConnect(p.HostV6, port) {
		t.Fatal("peer cannot reach host before any block")
	}

	out := d.MustParry("block", p.PeerV4.String(), p.PeerV6.String(), "--for", "1h", "--reason", "e2e")
	if !strings.Contains(out, "blocked 2 targets") {
		t.Errorf("block output: %q", out)
	}
	if p.Peer.Ping(p.HostV4) || p.Peer.CanConnect(p.HostV4, port) || p.Peer.CanConnect(p.HostV6, port) {
		t.Fatal("blocked peer still reaches the host (ICMP or TCP)")
	}
	k := kernelElems(t, p.Host, d.Table)
	if left, ok := k["192.0.2.2"]; !ok || left < 3590 || left > 3600 {
		t.Fatalf("kernel set: %v, want 192.0.2.2 with about 3600s left", k)
	}

	// list and status from the daemon's memory.
	var list struct {
		Count  int `json:"count"`
		Blocks []struct {
			Target, Reason, Source string
		} `json:"blocks"`
	}
	if err := json.Unmarshal([]byte(d.MustParry("list", "--json")), &list); err != nil || list.Count != 2 || list.Blocks[0].Reason != "e2e" {
		t.Fatalf("list --json: %+v %v", list, err)
	}
	if out := d.MustParry("list"); !strings.Contains(out, "192.0.2.2") || !strings.Contains(out, "59m") {
		t.Errorf("list: %q", out)
	}
	if out := d.MustParry("status"); !strings.Contains(out, "active blocks: 2") || !strings.Contains(out, "present") {
		t.Errorf("status: %q", out)
	}

	// The guard: own address, loopback, too broad → exit 1, nothing changes.
	for _, target := range []string{p.HostV4.String(), "127.0.0.1", "10.0.0.0/8", "0.0.0.0/0"} {
		if _, errOut, code := d.Parry("block", target); code != 1 || errOut == "" {
			t.Errorf("block %s: exit %d %q, want 1 with a message", target, code, errOut)
		}
	}
	if _, _, code := d.Parry("block", "not-an-ip"); code != 1 {
		t.Errorf("invalid target: exit %d, want 1", code)
	}
	if _, _, code := d.Parry("block", "--for"); code != 2 {
		t.Errorf("usage error: exit %d, want 2", code)
	}

	d.MustParry("unblock", p.PeerV4.String(), p.PeerV6.String())
	if !p.Peer.Ping(p.HostV4) || !p.Peer.CanConnect(p.HostV4, port) || !p.Peer.CanConnect(p.HostV6, port) {
		t.Fatal("unblocked peer cannot reach the host")
	}
	if out := d.MustParry("audit", "verify"); !strings.Contains(out, "audit log ok") {
		t.Errorf("audit verify: %q", out)
	}
}

func TestCIDRBlockAndExpiry(t *testing.T) {
	p := netns.NewPair(t)
	cfg := t.TempDir() + "/parry.yaml"
	if err := os.WriteFile(cfg, []byte(quietConfig+"prune_interval: 1s\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	d := newDaemon(t, p.Host, "--config", cfg)
	p.Host.ServeTCP(t, port)
	d.Start()
	if _, errOut, code := d.Parry("block", "192.0.2.0/30"); code != 1 || !strings.Contains(errOut, "own_address") {
		t.Fatalf("a CIDR holding the host's own address: exit %d %q", code, errOut)
	}
	d.MustParry("block", "192.0.2.2/31", "2001:db8::2/127", "--for", "8s")
	if p.Peer.Ping(p.HostV4) || p.Peer.CanConnect(p.HostV6, port) {
		t.Fatal("peer inside a blocked CIDR still reaches the host")
	}
	// An address inside a blocked CIDR is its own block (hash set), with its
	// own expiry.
	d.MustParry("block", "192.0.2.3", "--for", "8s")
	netns.Eventually(t, 20*time.Second, "the kernel ends the block on time", func() bool { return p.Peer.Ping(p.HostV4) })
	netns.Eventually(t, 10*time.Second, "parryd prunes the expired blocks", func() bool {
		var list struct{ Count int }
		json.Unmarshal([]byte(d.MustParry("list", "--json")), &list)
		return list.Count == 0
	})
}

func TestRestartRestoresRemainingTime(t *testing.T) {
	p := netns.NewPair(t)
	d := newDaemon(t, p.Host)
	d.Start()
	d.MustParry("block", p.PeerV4.String(), "--for", "1h")
	d.MustParry("block", "203.0.113.0/24", "--permanent")
	d.Stop()
	if k := kernelElems(t, p.Host, d.Table); len(k) != 2 {
		t.Fatalf("after SIGTERM the table must stay with its blocks; kernel: %v", k)
	}
	p.Host.MustRun(t, "nft", "delete", "table", "inet", d.Table)
	if p.Host.Ping(p.PeerV4) != p.Peer.Ping(p.HostV4) || !p.Peer.Ping(p.HostV4) {
		t.Fatal("with the table deleted the peer should pass")
	}
	d.Start()
	k := kernelElems(t, p.Host, d.Table)
	if left, ok := k["192.0.2.2"]; !ok || left > 3600 || left < 3500 {
		t.Fatalf("after restart: %v, want 192.0.2.2 with its remaining time (<3600s)", k)
	}
	if _, ok := k["203.0.113.0/24"]; !ok {
		t.Fatalf("after restart the permanent CIDR block is missing: %v", k)
	}
	if p.Peer.Ping(p.HostV4) {
		t.Fatal("restored block does not drop packets")
	}
}

func TestKill9LosesNoAcknowledgedBlock(t *testing.T) {
	p := netns.NewPair(t)
	d := newDaemon(t, p.Host)
	for i := range 5 {
		d.Start()
		target := fmt.Sprintf("203.0.113.%d", 10+i)
		d.MustParry("block", target, "--for", "1h") // exit 0: acknowledged
		d.Kill()
		p.Host.MustRun(t, "nft", "delete", "table", "inet", d.Table)
		d.Start()
		k := kernelElems(t, p.Host, d.Table)
		for j := 0; j <= i; j++ {
			if _, ok := k[fmt.Sprintf("203.0.113.%d", 10+j)]; !ok {
				t.Fatalf("round %d: acknowledged block 203.0.113.%d lost after kill -9; kernel: %v", i, 10+j, k)
			}
		}
		d.Kill()
	}
}

func TestHostileInputOnSocket(t *testing.T) {
	p := netns.NewPair(t)
	d := newDaemon(t, p.Host)
	d.Start()
	d.MustParry("block", "203.0.113.7", "--for", "1h")
	before := kernelElems(t, p.Host, d.Table)

	s := raw(t, d)
	inputs := []string{
		"garbage\n",
		`{"op":"block","targets":["198.51.100.1"]` + "\n", // half a JSON object
		`{"op":"block","targets":["` + strings.Repeat("9", 1<<20) + `"]}` + "\n",
		strings.Repeat("x", 1<<20) + "\n",
		`{"op":"block","targets":["198.51.100.1","999.1.1.1"]}` + "\n",
		`{"op":"block","targets":["::1"]}` + "\n",
		`{"op":"unblock","targets":"203.0.113.7"}` + "\n",
		`{"op":"block","targets":["198.51.100.1"],"for":"-5m"}` + "\n",
		"\xff\xfe\x00{}\n",
		`{"op":"uninstall_rules","extra":` + "\n",
	}
	for _, in := range inputs {
		if err := s.send([]byte(in)); err != nil {
			t.Fatalf("send: %v", err)
		}
		resp, err := s.read()
		if err != nil {
			t.Fatalf("input %.40q: no response: %v", in, err)
		}
		e, _ := resp["error"].(map[string]any)
		if resp["ok"] != false || e["code"] == "" || e["message"] == "" {
			t.Errorf("input %.40q: response %v, want an error with code and message", in, resp)
		}
	}
	// A half line followed by closing the connection.
	s2 := raw(t, d)
	s2.send([]byte(`{"op":"block","targ`))
	s2.c.Close()

	if !d.Alive() {
		t.Fatal("parryd died")
	}
	d.MustParry("status")
	after := kernelElems(t, p.Host, d.Table)
	if fmt.Sprint(before) != fmt.Sprint(after) {
		t.Fatalf("hostile input changed the kernel: %v -> %v", before, after)
	}
	var list struct{ Count int }
	json.Unmarshal([]byte(d.MustParry("list", "--json")), &list)
	if list.Count != 1 {
		t.Fatalf("hostile input changed the store: %d blocks", list.Count)
	}
}

func TestSelfHealAfterFlushRuleset(t *testing.T) {
	p := netns.NewPair(t)
	d := newDaemon(t, p.Host)
	d.Start()
	d.MustParry("block", p.PeerV4.String(), "--for", "1h")
	p.Host.MustRun(t, "nft", "flush", "ruleset")
	start := time.Now()
	netns.Eventually(t, 5*time.Second, "table rebuilt with the block after nft flush ruleset", func() bool {
		_, ok := kernelElems(t, p.Host, d.Table)["192.0.2.2"]
		return ok
	})
	t.Logf("self-heal took %v (target: within 2s)", time.Since(start).Round(10*time.Millisecond))
	if p.Peer.Ping(p.HostV4) {
		t.Fatal("healed table does not drop the blocked peer")
	}
	var st struct {
		TableHealth struct{ Heals int } `json:"table_health"`
	}
	json.Unmarshal([]byte(d.MustParry("status", "--json")), &st)
	if st.TableHealth.Heals < 1 {
		t.Errorf("status does not count the heal: %+v", st)
	}
}

// TestSelfHealAfterForeignElementDelete: someone deletes our element with
// nft (structure intact); the daemon puts it back and the peer is dropped
// again.
func TestSelfHealAfterForeignElementDelete(t *testing.T) {
	p := netns.NewPair(t)
	cfg := filepath.Join(t.TempDir(), "parry.yaml")
	if err := os.WriteFile(cfg, []byte(quietConfig+"reassert_interval: 2s\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	d := newDaemon(t, p.Host, "--config", cfg)
	d.Start()
	d.MustParry("block", p.PeerV4.String(), "--for", "1h")
	if p.Peer.Ping(p.HostV4) {
		t.Fatal("blocked peer is not dropped")
	}
	restored := func() bool {
		_, ok := kernelElems(t, p.Host, d.Table)[p.PeerV4.String()]
		return ok
	}
	p.Host.MustRun(t, "nft", "delete", "element", "inet", d.Table, "block4", "{ "+p.PeerV4.String()+" }")
	start := time.Now()
	netns.Eventually(t, 10*time.Second, "element restored after a foreign nft delete element", restored)
	t.Logf("foreign delete to restored: %v", time.Since(start).Round(10*time.Millisecond))

	// A second tampering right away, within reassert_interval, is handled
	// once the interval has passed.
	p.Host.MustRun(t, "nft", "flush", "set", "inet", d.Table, "block4")
	start = time.Now()
	netns.Eventually(t, 20*time.Second, "element restored after a foreign nft flush set", restored)
	t.Logf("second foreign change (within reassert_interval 2s) to restored: %v", time.Since(start).Round(10*time.Millisecond))
	netns.Eventually(t, 10*time.Second, "peer dropped again", func() bool { return !p.Peer.Ping(p.HostV4) })
	if n := strings.Count(readFile(t, d.AuditPath()), `"reason":"foreign_change"`); n < 2 {
		t.Errorf("audit has %d foreign_change re-asserts, want 2 or more", n)
	}
	if out := d.MustParry("audit", "verify"); !strings.Contains(out, "audit log ok") {
		t.Errorf("audit verify: %q", out)
	}
}

func TestBlockFileAndReload(t *testing.T) {
	p := netns.NewPair(t)
	d := newDaemon(t, p.Host)
	d.Start()
	var b strings.Builder
	b.WriteString("# feed\n\n")
	for i := range 20000 {
		fmt.Fprintf(&b, "10.%d.%d.%d\n", 100+i/65536, (i/256)%256, i%256)
	}
	b.WriteString("127.0.0.1   # refused by the guard, reported\n")
	out, errOut, code := d.ParryIn([]byte(b.String()), "block", "--file", "-", "--for", "1d")
	if code != 1 || !strings.Contains(out, "blocked 20000 targets") || !strings.Contains(errOut, "127.0.0.1") {
		t.Fatalf("block --file: exit %d\n%s\n%s", code, out, errOut)
	}
	// A full dump right after a big insert can come back short while the
	// kernel grows the hash table (the walk skips entries during a resize):
	// poll it.
	netns.Eventually(t, 30*time.Second, "kernel dump covers all 20000 addresses", func() bool {
		return kernelCovered(kernelElems(t, p.Host, d.Table)) == 20000 // neighbours merge in the union
	})
	// A bad line refuses the whole file before anything is sent.
	_, errOut, code = d.ParryIn([]byte("203.0.113.9\nnot-an-ip\n"), "block", "--file", "-")
	if code != 1 || !strings.Contains(errOut, "stdin:2") {
		t.Fatalf("bad file line: exit %d %q", code, errOut)
	}
	if _, ok := kernelElems(t, p.Host, d.Table)["203.0.113.9"]; ok {
		t.Fatal("a refused file was partly applied")
	}
}

func TestRestartRemovesUnknownElements(t *testing.T) {
	p := netns.NewPair(t)
	d := newDaemon(t, p.Host)
	d.Start()
	d.MustParry("block", "203.0.113.7", "--for", "1h")
	d.Stop()
	// Someone adds elements behind parry's back while it is stopped.
	p.Host.MustRun(t, "nft", "add", "element", "inet", d.Table, "block4", "{ 198.51.100.77 timeout 1h }")
	p.Host.MustRun(t, "nft", "add", "element", "inet", d.Table, "block4net", "{ 198.51.100.128/25 timeout 1h }")
	d.Start() // READY comes after the re-assert; the sweep follows on its own connection
	netns.Eventually(t, 10*time.Second, "unknown elements removed", func() bool {
		k := kernelElems(t, p.Host, d.Table)
		_, a := k["198.51.100.77"]
		_, b := k["198.51.100.128/25"]
		_, ours := k["203.0.113.7"]
		return !a && !b && ours
	})
	netns.Eventually(t, 5*time.Second, "the sweep is audited", func() bool {
		b, _ := os.ReadFile(d.AuditPath())
		return strings.Contains(string(b), `"removed_unknown":["198.51.100.77","198.51.100.128/25"]`) ||
			strings.Contains(string(b), `"removed_unknown":["198.51.100.128/25","198.51.100.77"]`)
	})
	d.MustParry("audit", "verify")
}
