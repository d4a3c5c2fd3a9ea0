package agent

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/parryhq/parry/agent/api"
	"github.com/parryhq/parry/agent/control"
	"github.com/parryhq/parry/test/netns"
	"github.com/parryhq/parry/test/parrybin"
)

// TestEveryOpRefusesUnknownFields sends each registered op (the incident
// and integrity ops included) an unknown member as root: every one answers
// bad_request and nothing changes, whether the op takes parameters or not.
func TestEveryOpRefusesUnknownFields(t *testing.T) {
	fw := newFakeFW()
	d := newTestDaemon(t, testConfig(t), fw, &clock{t: time.Now()})
	if _, err := AttachIncident(d, ""); err != nil {
		t.Fatal(err)
	}
	root := control.ResolvePeer(control.Peer{UID: 0, GID: 0}, nil)
	ctx := context.Background()
	if w := answer(t, d.server.HandleLine(ctx, root, []byte(`{"op":"block","targets":["203.0.113.7"],"for":"1h"}`))); !w.OK {
		t.Fatalf("block: %+v", w.Error)
	}
	// An unacknowledged chain break, so that audit_ack would change something.
	d.breakMu.Lock()
	d.chainBreak = &api.ChainBreak{Time: time.Now().UTC(), Found: "test"}
	d.breakMu.Unlock()

	ops := d.server.Ops()
	for _, want := range []string{"uninstall_rules", "audit_ack", "integrity_accept", "evidence_capture", "check", "signal"} {
		if !slices.Contains(ops, want) {
			t.Fatalf("op %s is not registered: %v", want, ops)
		}
	}
	wantKernel := fw.state()
	seq := d.audit.Seq()
	for _, op := range ops {
		for _, extra := range []string{`"dry_run":true`, `"confirm":false`, `"zz_unknown":{"a":[1]}`} {
			line := `{"op":"` + op + `","id":7,` + extra + `}`
			w := answer(t, d.server.HandleLine(ctx, root, []byte(line)))
			if w.OK || w.Error.Code != api.CodeBadRequest {
				t.Errorf("%s: got ok=%v %+v, want bad_request", line, w.OK, w.Error)
			}
			if string(w.ID) != "7" {
				t.Errorf("%s: id %s not echoed", line, w.ID)
			}
		}
	}
	if !fw.present {
		t.Fatal("uninstall_rules with an unknown field removed the table")
	}
	if s := fw.state(); s != wantKernel {
		t.Fatalf("kernel changed: %q, want %q", s, wantKernel)
	}
	if d.AuditBreak() == nil {
		t.Fatal("audit_ack with an unknown field acknowledged the chain break")
	}
	if got := d.audit.Seq(); got != seq {
		t.Fatalf("audit log grew from seq %d to %d", seq, got)
	}
	// Without the extra member the same ops still work.
	if w := answer(t, d.server.HandleLine(ctx, root, []byte(`{"op":"status","id":1}`))); !w.OK {
		t.Fatalf("status: %+v", w.Error)
	}
}

func answer(t *testing.T, line []byte) wireResp {
	t.Helper()
	var w wireResp
	if err := json.Unmarshal(line, &w); err != nil {
		t.Fatalf("response %q: %v", line, err)
	}
	if !w.OK && (w.Error == nil || w.Error.Code == "") {
		t.Fatalf("error response without code: %s", line)
	}
	return w
}

// The stalling client: TestControlSocketStallingUser runs this test
// binary again as a throwaway user, with these variables set.
const (
	envStallSocket = "PARRY_TEST_STALL_SOCKET"
	envStallConns  = "PARRY_TEST_STALL_CONNS"
)

// TestHelperStallingClient is not a test: run by
// TestControlSocketStallingUser as another user, it opens the connections,
// reads the first answer of each (served or refused), then pipelines pings
// without ever reading again. It prints "served I", "refused I", "ready",
// and "closed I" when the daemon drops a served connection. It ends when
// its stdin closes.
func TestHelperStallingClient(t *testing.T) {
	sock := os.Getenv(envStallSocket)
	if sock == "" {
		return
	}
	n, _ := strconv.Atoi(os.Getenv(envStallConns))
	out := make(chan string, 4*n+1)
	go func() {
		for s := range out {
			fmt.Println(s)
		}
	}()
	pings := bytes.Repeat([]byte(`{"op":"ping"}`+"\n"), 4096)
	for i := range n {
		c, err := net.Dial("unix", sock)
		if err != nil {
			out <- fmt.Sprintf("dial-error %d %v", i, err)
			continue
		}
		c.Write([]byte(`{"op":"ping"}` + "\n"))
		first, err := bufio.NewReaderSize(c, 16).ReadString('\n') // at most one line is waiting
		if err != nil || strings.Contains(first, api.CodeTooManyConns) {
			out <- fmt.Sprintf("refused %d", i)
			c.Close()
			continue
		}
		out <- fmt.Sprintf("served %d", i)
		go func() {
			for {
				if _, err := c.Write(pings); err != nil {
					out <- fmt.Sprintf("closed %d", i)
					return
				}
			}
		}()
	}
	out <- "ready"
	io.Copy(io.Discard, os.Stdin)
	os.Exit(0)
}

// TestControlSocketStallingUser: an unprivileged user opens as many
// connections as max_connections allows, pipelining requests and never
// reading the answers. Root still connects and is answered, and the
// stalled connections are closed after the write timeout (logged).
func TestControlSocketStallingUser(t *testing.T) {
	netns.RequireRoot(t)
	u := newStallUser(t)
	exe := worldExecutable(t)
	sockDir, err := os.MkdirTemp("", "parry-control-sock")
	if err == nil {
		err = os.Chmod(sockDir, 0o755)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(sockDir) })

	cfg := testConfig(t)
	cfg.Socket = filepath.Join(sockDir, "parry.sock")
	cfg.Control.SocketMode = "0666"
	cfg.Control.WriteTimeout = api.Duration(3 * time.Second)
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	logs := &parrybin.Buffer{}
	d, err := New(cfg, Options{Firewall: newFakeFW(), Now: time.Now, Logger: slog.New(slog.NewTextHandler(logs, nil)),
		HostAddrs: func() ([]netip.Addr, error) { return []netip.Addr{netip.MustParseAddr("192.0.2.1")}, nil }})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	if err := d.heal.Reconcile("start"); err != nil {
		t.Fatal(err)
	}
	serve(t, d)

	n := cfg.Control.MaxConnections
	cmd := exec.Command("setpriv", "--reuid="+u.uid, "--regid="+u.gid, "--init-groups", "--",
		exe, "-test.run=^TestHelperStallingClient$")
	cmd.Env = append(os.Environ(), envStallSocket+"="+cfg.Socket, envStallConns+"="+strconv.Itoa(n))
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stdin.Close(); cmd.Process.Kill(); cmd.Wait() })
	lines := make(chan string, 4*n)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	next := func(what string) string {
		t.Helper()
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("stalling client ended while waiting for %s", what)
			}
			return l
		case <-time.After(30 * time.Second):
			t.Fatalf("no %s from the stalling client within 30s", what)
		}
		return ""
	}
	served, refused := 0, 0
	for l := next("ready"); l != "ready"; l = next("ready") {
		switch f := strings.Fields(l); f[0] {
		case "served":
			served++
		case "refused":
			refused++
		case "closed":
			t.Fatalf("a stalled connection was closed before root tried (write timeout too short for this machine?): %s", l)
		default:
			t.Fatalf("stalling client: %s", l)
		}
	}
	t.Logf("the user got %d connections served, %d refused", served, refused)
	if served == 0 || served > cfg.Control.MaxConnectionsPerUID {
		t.Errorf("the user holds %d connections, want 1..%d (control.max_connections_per_uid)", served, cfg.Control.MaxConnectionsPerUID)
	}

	// Root connects and is answered while the user's connections stall.
	c, err := net.DialTimeout("unix", cfg.Socket, 2*time.Second)
	if err != nil {
		t.Fatalf("root cannot connect: %v", err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write([]byte(`{"op":"status"}` + "\n")); err != nil {
		t.Fatalf("root's request: %v", err)
	}
	if w := readResp(t, bufio.NewReader(c)); !w.OK {
		t.Fatalf("root was refused while a user stalled %d connections: %+v", served, w.Error)
	}

	// The stalled connections are dropped after the write timeout.
	bound := time.Now().Add(cfg.Control.WriteTimeout.D() + 10*time.Second)
	for closed := 0; closed < served; {
		if l := next("closed"); strings.HasPrefix(l, "closed ") {
			closed++
		}
		if time.Now().After(bound) {
			t.Fatalf("the stalled connections were not all closed within the write timeout + 10s")
		}
	}
	if !strings.Contains(logs.String(), "peer does not read its answers") {
		t.Errorf("no log line for the dropped connections:\n%s", logs.String())
	}
}

type stallUser struct{ name, uid, gid string }

// newStallUser is a throwaway system user, removed when the test ends.
func newStallUser(t *testing.T) stallUser {
	t.Helper()
	name := netns.UniqueName("pc")
	if out, err := exec.Command("useradd", "--system", "--no-create-home", "--user-group", "--shell", "/usr/sbin/nologin", name).CombinedOutput(); err != nil {
		t.Fatalf("useradd %s: %v: %s", name, err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("userdel", name).CombinedOutput(); err != nil {
			t.Errorf("userdel %s: %v: %s", name, err, out)
		}
	})
	u, err := user.Lookup(name)
	if err != nil {
		t.Fatal(err)
	}
	return stallUser{name: name, uid: u.Uid, gid: u.Gid}
}

// worldExecutable copies this test binary where another user can run it.
func worldExecutable(t *testing.T) string {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "parry-agent-test")
	if err == nil {
		err = os.Chmod(dir, 0o755)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	src, err := os.Open(self)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	path := filepath.Join(dir, "agent.test")
	dst, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_EXCL, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(dst, src); err != nil {
		t.Fatal(err)
	}
	if err := dst.Close(); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestRefusalFloodAuditsTwoLines: a user with no rights asking for status
// again and again leaves one refuse line at once and one summary.
func TestRefusalFloodAuditsTwoLines(t *testing.T) {
	d := newTestDaemon(t, testConfig(t), newFakeFW(), &clock{t: time.Now()})
	alice := control.Peer{UID: 1000, User: "alice"}
	const n = 500
	for range n {
		if w := answer(t, d.server.HandleLine(context.Background(), alice, []byte(`{"op":"status"}`))); w.OK || w.Error.Code != api.CodeForbidden {
			t.Fatalf("non-admin status: %+v", w)
		}
	}
	if got := auditEvents(t, d, "refuse"); len(got) != 1 || got[0]["op"] != "status" {
		t.Fatalf("refuse lines after %d refusals: %v, want 1", n, got)
	}
	d.server.Close() // as Close does
	got := auditEvents(t, d, "refuse")
	if len(got) != 2 || got[1]["count"] != float64(n-1) {
		t.Fatalf("refuse lines at close: %v, want a summary with count %d", got, n-1)
	}
}
