package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/parryhq/parry/agent/client"
	"github.com/parryhq/parry/test/daemon"
	"github.com/parryhq/parry/test/netns"
	"github.com/parryhq/parry/test/parrybin"
)

// follower is `parry events ... --json` running as its own process, its
// lines collected as they come.
type follower struct {
	t     *testing.T
	cmd   *exec.Cmd
	mu    sync.Mutex
	lines []map[string]any
	done  chan struct{}
}

func startFollower(t *testing.T, d *daemon.Daemon, args ...string) *follower {
	t.Helper()
	_, parry := parrybin.Build(t)
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, parry, append([]string{"--socket", d.Socket, "events", "--json"}, args...)...)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	f := &follower{t: t, cmd: cmd, done: make(chan struct{})}
	go func() {
		defer close(f.done)
		sc := bufio.NewScanner(out)
		sc.Buffer(make([]byte, 1<<20), 16<<20)
		for sc.Scan() {
			var m map[string]any
			if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
				t.Errorf("parry events --json: not a JSON object: %q", sc.Text())
				continue
			}
			f.mu.Lock()
			f.lines = append(f.lines, m)
			f.mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		cancel()
		<-f.done
		if cmd.ProcessState == nil {
			_ = cmd.Wait()
		}
		if t.Failed() {
			t.Logf("parry events stderr: %s", stderr.String())
		}
	})
	f.waitFor("the live marker", func(m map[string]any) bool { return m["live"] == true })
	return f
}

// waitFor polls until a line matches.
func (f *follower) waitFor(what string, match func(map[string]any) bool) map[string]any {
	f.t.Helper()
	var found map[string]any
	ok := netns.Poll(20*time.Second, 20*time.Millisecond, func() bool {
		f.mu.Lock()
		defer f.mu.Unlock()
		for _, m := range f.lines {
			if match(m) {
				found = m
				return true
			}
		}
		return false
	})
	if !ok {
		f.t.Fatalf("parry events: no line with %s within 20s; got:\n%s", what, f.dump())
	}
	return found
}

func (f *follower) snapshot() []map[string]any {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.lines)
}

func (f *follower) dump() string {
	var b strings.Builder
	for _, m := range f.snapshot() {
		j, _ := json.Marshal(m)
		b.Write(j)
		b.WriteByte('\n')
	}
	return b.String()
}

// isEvent matches an event line by name and, if target is set, a target
// among its fields.
func isEvent(name, target string) func(map[string]any) bool {
	return func(m map[string]any) bool {
		if m["event"] != name {
			return false
		}
		if target == "" {
			return true
		}
		j, _ := json.Marshal(m["fields"])
		return strings.Contains(string(j), `"`+target+`"`) || strings.Contains(string(j), `"`+target+`/`)
	}
}

// checkSeqs fails unless every event line has "ok" and seqs strictly grow
// (each event once, in order).
func checkSeqs(t *testing.T, lines []map[string]any) {
	t.Helper()
	var last float64
	for _, m := range lines {
		if m["ok"] != true {
			t.Errorf("line without ok:true: %v", m)
		}
		seq, ok := m["seq"].(float64)
		if !ok {
			continue
		}
		if seq <= last {
			t.Errorf("seq %v after %v: an event twice or out of order", seq, last)
		}
		last = seq
	}
}

// TestEventsFollow: a block, an unblock, a refused block, an integrity
// finding and a lockdown made while `parry events --follow` runs appear in
// that order, each once.
func TestEventsFollow(t *testing.T) {
	ns := netns.New(t)
	watched := t.TempDir()
	file := filepath.Join(watched, "app.conf")
	if err := os.WriteFile(file, []byte("x=1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	d := daemon.New(t, ns, daemon.Options{Config: "integrity:\n  paths:\n    - path: " + watched + "\n  package_manager: none\n"})
	d.Start()
	f := startFollower(t, d, "--follow")

	d.MustParry("block", "203.0.113.7", "--for", "1h", "--reason", "events e2e")
	d.MustParry("unblock", "203.0.113.7")
	if _, _, code := d.Parry("block", "127.0.0.1"); code != 1 {
		t.Fatalf("block 127.0.0.1: exit %d, want 1 (refused)", code)
	}
	if err := os.WriteFile(file, []byte("x=2 tampered\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	f.waitFor("the finding", isEvent("integrity_finding", ""))
	d.MustParry("lockdown", "--for", "1m", "--allow", "192.0.2.0/24", "--reason", "events e2e")
	f.waitFor("the lockdown", isEvent("lockdown", ""))

	lines := f.snapshot()
	checkSeqs(t, lines)
	want := []struct {
		name   string
		match  func(map[string]any) bool
		kind   string
		reason string
	}{
		{"block", isEvent("block", "203.0.113.7"), "block", ""},
		{"unblock", isEvent("unblock", "203.0.113.7"), "unblock", ""},
		{"refused block", isEvent("refuse", "127.0.0.1"), "refuse", ""},
		{"finding", isEvent("integrity_finding", ""), "finding", ""},
		{"lockdown", isEvent("lockdown", ""), "lockdown", ""},
	}
	at := -1
	for _, w := range want {
		var idx []int
		for i, m := range lines {
			if w.match(m) {
				idx = append(idx, i)
			}
		}
		if len(idx) != 1 {
			t.Errorf("%s: %d lines, want 1", w.name, len(idx))
			continue
		}
		if idx[0] <= at {
			t.Errorf("%s: at line %d, before the event made before it (line %d)", w.name, idx[0], at)
		}
		if k := lines[idx[0]]["kind"]; k != w.kind {
			t.Errorf("%s: kind %v, want %s", w.name, k, w.kind)
		}
		at = idx[0]
	}
	if t.Failed() {
		t.Logf("stream:\n%s", f.dump())
	}

	// parryd stopping ends the stream (with an end line if the connection
	// is still open when the stream sees the stop); the CLI exits 1.
	d.Stop()
	select {
	case <-f.done:
	case <-time.After(20 * time.Second):
		t.Fatal("parry events --follow still running 20s after parryd stopped")
	}
	if err := f.cmd.Wait(); f.cmd.ProcessState == nil || f.cmd.ProcessState.ExitCode() != 1 {
		t.Errorf("parry events --follow after parryd stopped: %v, want exit 1", err)
	}
}

// TestEventsSinceThenFollow: events --since replays the audit log, then
// joins the live stream: a block made before is replayed once, one made
// after is streamed once; the kind filter holds on both.
func TestEventsSinceThenFollow(t *testing.T) {
	ns := netns.New(t)
	d := newDaemon(t, ns)
	d.Start()
	d.MustParry("block", "203.0.113.1", "--for", "1h")
	d.MustParry("lockdown", "--for", "1m", "--allow", "192.0.2.0/24")
	d.MustParry("release")

	// Without --follow: the replay, then exit.
	out := d.MustParry("events", "--since", "1h", "--kind", "block", "--json")
	var blocks int
	for l := range strings.Lines(out) {
		if strings.Contains(l, `"event":"block"`) {
			blocks++
		}
		if strings.Contains(l, `"event":"lockdown"`) {
			t.Errorf("--kind block let a lockdown through: %s", l)
		}
	}
	if blocks != 1 {
		t.Errorf("events --since 1h --kind block: %d blocks, want 1:\n%s", blocks, out)
	}

	f := startFollower(t, d, "--since", "1h", "--follow", "--kind", "block,lockdown")
	d.MustParry("block", "203.0.113.2", "--for", "1h")
	f.waitFor("the second block", isEvent("block", "203.0.113.2"))
	lines := f.snapshot()
	checkSeqs(t, lines)
	count := func(match func(map[string]any) bool) (n int) {
		for _, m := range lines {
			if match(m) {
				n++
			}
		}
		return n
	}
	if n := count(isEvent("block", "203.0.113.1")); n != 1 {
		t.Errorf("the block made before: %d lines, want 1", n)
	}
	if n := count(isEvent("block", "203.0.113.2")); n != 1 {
		t.Errorf("the block made after: %d lines, want 1", n)
	}
	if n := count(isEvent("lockdown", "")); n != 1 {
		t.Errorf("lockdown: %d lines, want 1", n)
	}
	if n := count(isEvent("release", "")); n != 0 {
		t.Errorf("release: %d lines, want none (--kind block,lockdown)", n)
	}
	live := slices.IndexFunc(lines, func(m map[string]any) bool { return m["live"] == true })
	second := slices.IndexFunc(lines, isEvent("block", "203.0.113.2"))
	if live < 0 || second < live {
		t.Errorf("the block made after the replay is not after the live marker:\n%s", f.dump())
	}
}

// TestEventsNonAdminRefused: a user who may connect to the socket but is
// not an admin may not watch events (they carry user names and addresses).
func TestEventsNonAdminRefused(t *testing.T) {
	ns := netns.New(t)
	d := daemon.New(t, ns, daemon.Options{Config: quietConfig + "control:\n  socket_mode: \"0666\"\n"})
	d.Start()
	u := daemon.NewUser(t)
	stdout, stderr, code := d.ParryAs(u, "events", "--follow", "--json")
	if code != 1 || !strings.Contains(stdout, `"forbidden"`) {
		t.Fatalf("events as %s: exit %d, stdout %q, stderr %q; want exit 1 and code forbidden", u.Name, code, stdout, stderr)
	}
}

// subscribeRaw subscribes on a raw connection and reads the answer line
// and the live marker, then reads nothing more.
func subscribeRaw(t testing.TB, socket, req string) (net.Conn, *bufio.Reader) {
	t.Helper()
	c, err := net.Dial("unix", socket)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if _, err := io.WriteString(c, req+"\n"); err != nil {
		t.Fatal(err)
	}
	r := bufio.NewReaderSize(c, 1<<20)
	for _, want := range []string{`"ok":true`, `"live":true`} {
		line, err := r.ReadString('\n')
		if err != nil || !strings.Contains(line, want) {
			t.Fatalf("subscribe: %q, %v; want a line with %s", line, err, want)
		}
	}
	return c, r
}

// blockAcks blocks n addresses one request at a time on one connection
// and returns each acknowledgement's latency.
func blockAcks(t testing.TB, cl *client.Client, n, base int) []time.Duration {
	t.Helper()
	lat := make([]time.Duration, 0, n)
	for i := range n {
		req := map[string]any{"op": "block", "targets": []string{fmt.Sprintf("10.%d.%d.%d", 20+base/65536, (base+i)/256%256, (base+i)%256)}, "for": "1h"}
		start := time.Now()
		if err := cl.Call(req, nil); err != nil {
			t.Fatalf("block: %v", err)
		}
		lat = append(lat, time.Since(start))
	}
	return lat
}

// TestEventsStalledSubscriber: a subscriber that stops reading does not
// delay a block's acknowledgement (each ack is measured and logged; none
// waits for the write timeout), and when it reads again it is told how
// many events it missed: the events it got and the ones it missed add up
// to the blocks made.
func TestEventsStalledSubscriber(t *testing.T) {
	ns := netns.New(t)
	d := newDaemon(t, ns)
	d.WriteConfig(quietConfig + "control:\n  write_timeout: 60s\n  rate: 100000\n  burst: 100000\n")
	d.Start()
	_, r := subscribeRaw(t, d.Socket, `{"op":"events","kinds":["block"]}`)

	cl, err := client.Dial(d.Socket)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	// Fill the socket buffer and the subscriber's queue (4096 events),
	// pipelined, then time single blocks with the stalled subscriber.
	const flood = 6000
	reqs := make([][]byte, flood)
	for i := range reqs {
		reqs[i] = fmt.Appendf(nil, `{"op":"block","targets":["10.9.%d.%d"],"for":"1h"}`, i/256, i%256)
	}
	if err := cl.Pipeline(reqs, func(i int, resp client.Response) error {
		if !resp.OK {
			return fmt.Errorf("block %d: %v", i, resp.Error)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	lat := blockAcks(t, cl, 200, 0)
	slices.Sort(lat)
	p50, p99, worst := lat[len(lat)/2], lat[len(lat)*99/100], lat[len(lat)-1]
	t.Logf("block ack with a stalled subscriber (200 blocks): median %v, p99 %v, max %v", p50, p99, worst)
	if worst > 20*time.Second {
		t.Errorf("a block's ack took %v: the stalled subscriber (write_timeout 60s) held enforcement", worst)
	}

	// Read again: events + missed = the blocks made.
	total := flood + 200
	got, missed := 0, 0
	var sawMissed bool
	deadline := time.Now().Add(30 * time.Second)
	for got+missed < total && time.Now().Before(deadline) {
		line, err := r.ReadString('\n')
		if err != nil {
			t.Fatalf("read the stream: %v (got %d, missed %d of %d)", err, got, missed, total)
		}
		var m struct {
			Event  string `json:"event"`
			Missed int    `json:"missed"`
			Reason string `json:"reason"`
		}
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("stream line %q: %v", line, err)
		}
		switch {
		case m.Event == "block":
			got++
		case m.Missed > 0:
			sawMissed = true
			missed += m.Missed
			if m.Reason != "queue_full" {
				t.Errorf("missed line reason %q, want queue_full", m.Reason)
			}
		}
	}
	t.Logf("the subscriber got %d events and was told it missed %d (of %d blocks)", got, missed, total)
	if !sawMissed {
		t.Errorf("no missed line: a subscriber that stopped reading got every event (%d of %d)?", got, total)
	}
	if got+missed != total {
		t.Errorf("got %d + missed %d != %d blocks made", got, missed, total)
	}
}
