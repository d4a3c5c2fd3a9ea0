// Package response_test runs the response features end to end: parryd in a
// throwaway network namespace, the parry CLI as a real process (also as an
// unprivileged user), real TCP connections from peer namespaces.
package response_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/parryhq/parry/test/netns"
	"github.com/parryhq/parry/test/parrybin"
)

func TestMain(m *testing.M) {
	code := m.Run()
	parrybin.Remove()
	os.Exit(code)
}

// daemon is one parryd process inside a namespace.
type daemon struct {
	t      testing.TB
	ns     *netns.NS
	state  string
	sock   string
	config string
	cmd    *exec.Cmd
	logs   *parrybin.Buffer
	done   chan struct{}
}

// newDaemon writes config (YAML; state_dir, socket and table are added)
// and prepares a parryd in ns. The socket lives in a world-traversable
// directory so unprivileged test users can reach it.
func newDaemon(t testing.TB, ns *netns.NS, config string) *daemon {
	t.Helper()
	state := t.TempDir()
	sockDir, err := os.MkdirTemp("", "parry-response-sock")
	if err == nil {
		err = os.Chmod(sockDir, 0o755)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(sockDir) })
	d := &daemon{t: t, ns: ns, state: filepath.Join(state, "state"), sock: filepath.Join(sockDir, "parry.sock"),
		config: filepath.Join(state, "parry.yaml")}
	full := fmt.Sprintf("state_dir: %s\nsocket: %s\ntable: parry\n%s", d.state, d.sock, config)
	if err := os.WriteFile(d.config, []byte(full), 0o600); err != nil {
		t.Fatal(err)
	}
	return d
}

// start runs parryd and waits until it answers status.
func (d *daemon) start() {
	d.t.Helper()
	parryd, _ := parrybin.Build(d.t)
	d.logs = &parrybin.Buffer{}
	d.cmd = d.ns.Command(context.Background(), parryd, "--config", d.config)
	d.cmd.Stdout, d.cmd.Stderr = d.logs, d.logs
	if err := d.cmd.Start(); err != nil {
		d.t.Fatalf("start parryd: %v", err)
	}
	done := make(chan struct{})
	d.done = done
	cmd := d.cmd
	go func() { _ = cmd.Wait(); close(done) }()
	d.t.Cleanup(func() {
		select {
		case <-done:
		default:
			_ = cmd.Process.Signal(syscall.SIGKILL)
			<-done
		}
		if d.t.Failed() {
			d.t.Logf("parryd log:\n%s", d.logs.String())
		}
	})
	netns.Eventually(d.t, 10*time.Second, "parryd answers status", func() bool {
		select {
		case <-done:
			d.t.Fatalf("parryd exited during start:\n%s", d.logs.String())
		default:
		}
		_, _, code := d.parry("status")
		return code == 0
	})
}

// stop sends SIGTERM and waits for the exit.
func (d *daemon) stop() {
	d.t.Helper()
	_ = d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.done:
	case <-time.After(10 * time.Second):
		d.t.Fatal("parryd did not stop within 10s of SIGTERM")
	}
}

// parry runs the CLI as root.
func (d *daemon) parry(args ...string) (stdout, stderr string, code int) {
	return d.parryAs(nil, args...)
}

// parryAs runs the CLI, as user u when not nil (setpriv, no shell).
func (d *daemon) parryAs(u *testUser, args ...string) (stdout, stderr string, code int) {
	d.t.Helper()
	_, parry := parrybin.Build(d.t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	argv := append([]string{parry, "--socket", d.sock}, args...)
	if u != nil {
		argv = append([]string{"setpriv", "--reuid=" + u.uid, "--regid=" + u.gid, "--init-groups", "--"}, argv...)
	}
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		code = ee.ExitCode()
	case err != nil:
		d.t.Fatalf("run parry: %v", err)
	}
	return o.String(), e.String(), code
}

// mustParry runs the CLI as root and fails the test unless it exits 0.
func (d *daemon) mustParry(args ...string) string {
	d.t.Helper()
	out, errOut, code := d.parry(args...)
	if code != 0 {
		d.t.Fatalf("parry %s: exit %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), code, out, errOut)
	}
	return out
}

// testUser is a throwaway system user, removed when the test ends.
type testUser struct {
	name, uid, gid string
}

func newTestUser(t testing.TB) *testUser {
	t.Helper()
	name := netns.UniqueName("pt")
	if out, err := exec.Command("useradd", "--system", "--no-create-home", "--user-group", "--shell", "/usr/sbin/nologin", name).CombinedOutput(); err != nil {
		t.Fatalf("useradd %s: %v: %s", name, err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("userdel", name).CombinedOutput(); err != nil {
			t.Errorf("userdel %s: %v: %s", name, err, out)
		}
	})
	id := func(flag string) string {
		out, err := exec.Command("id", flag, name).Output()
		if err != nil {
			t.Fatalf("id %s %s: %v", flag, name, err)
		}
		return strings.TrimSpace(string(out))
	}
	return &testUser{name: name, uid: id("-u"), gid: id("-g")}
}

// topology is a protected host, an ordinary peer on 192.0.2.0/24 and a
// management peer on 198.51.100.0/24, with a TCP service on the host.
type topology struct {
	host, peer, mgmt *netns.NS
	hostAddr         netip.Addr // as the peer sees it
	hostMgmtAddr     netip.Addr // as the management peer sees it
	peerAddr         netip.Addr
	mgmtAddr         netip.Addr
}

const port = 8080

func newTopology(t *testing.T) *topology {
	t.Helper()
	pair := netns.NewPair(t)
	mgmt := netns.New(t)
	netns.Link(t, pair.Host, mgmt,
		[]netip.Prefix{netip.MustParsePrefix("198.51.100.1/24")}, []netip.Prefix{netip.MustParsePrefix("198.51.100.2/24")})
	top := &topology{host: pair.Host, peer: pair.Peer, mgmt: mgmt,
		hostAddr: netip.MustParseAddr("192.0.2.1"), hostMgmtAddr: netip.MustParseAddr("198.51.100.1"),
		peerAddr: netip.MustParseAddr("192.0.2.2"), mgmtAddr: netip.MustParseAddr("198.51.100.2")}
	top.host.ServeTCP(t, port)
	netns.Eventually(t, 5*time.Second, "peer reaches the host's service", func() bool {
		return top.peer.CanConnect(top.hostAddr, port)
	})
	netns.Eventually(t, 5*time.Second, "management peer reaches the host's service", func() bool {
		return top.mgmt.CanConnect(top.hostMgmtAddr, port)
	})
	return top
}
