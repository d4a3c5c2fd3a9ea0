package e2e

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/parryhq/parry/test/netns"
	"github.com/parryhq/parry/test/parrybin"
)

// notifySocket listens for sd_notify datagrams like systemd does.
func notifySocket(t *testing.T) (string, <-chan string) { return notifySocketB(t) }

func notifySocketB(t testing.TB) (string, <-chan string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "notify.sock")
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	ch := make(chan string, 100)
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := c.Read(buf)
			if err != nil {
				close(ch)
				return
			}
			for _, l := range strings.Split(strings.TrimSpace(string(buf[:n])), "\n") {
				ch <- l
			}
		}
	}()
	return path, ch
}

func waitFor(t *testing.T, ch <-chan string, prefix string, d time.Duration) string {
	t.Helper()
	deadline := time.After(d)
	for {
		select {
		case m, ok := <-ch:
			if !ok {
				t.Fatalf("notify socket closed before %s", prefix)
			}
			if strings.HasPrefix(m, prefix) {
				return m
			}
		case <-deadline:
			t.Fatalf("no %s from parryd within %v", prefix, d)
		}
	}
}

func TestSystemdNotifyWatchdogAndStop(t *testing.T) {
	p := netns.NewPair(t)
	d := newDaemon(t, p.Host)
	// Blocks stored before start, with the table deleted: READY=1 must come
	// only once they are back in the kernel.
	d.start()
	d.mustParry("block", "203.0.113.7", "--for", "1h")
	d.stop()
	p.Host.MustRun(t, "nft", "delete", "table", "inet", d.table)

	path, ch := notifySocket(t)
	t.Setenv("NOTIFY_SOCKET", path)
	t.Setenv("WATCHDOG_USEC", "600000") // 0.6 s: pings every 0.2-1 s
	d.start()
	waitFor(t, ch, "READY=1", 5*time.Second)
	if _, ok := kernelElems(t, p.Host, d.table)["203.0.113.7"]; !ok {
		t.Fatal("READY=1 before the store was re-asserted into the kernel")
	}
	st := waitFor(t, ch, "STATUS=", 5*time.Second)
	if !strings.Contains(st, "1 active blocks") || !strings.Contains(st, "table ok") {
		t.Errorf("status line %q", st)
	}
	waitFor(t, ch, "WATCHDOG=1", 3*time.Second)
	waitFor(t, ch, "WATCHDOG=1", 3*time.Second)
	_ = d.cmd.Process.Signal(syscall.SIGTERM)
	waitFor(t, ch, "STOPPING=1", 5*time.Second)
	<-d.done
	if code := d.cmd.ProcessState.ExitCode(); code != 0 {
		t.Fatalf("exit %d after SIGTERM", code)
	}
	if _, ok := kernelElems(t, p.Host, d.table)["203.0.113.7"]; !ok {
		t.Fatal("SIGTERM removed the table; it must stay")
	}
}

func TestSocketActivation(t *testing.T) {
	p := netns.NewPair(t)
	d := newDaemon(t, p.Host)
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: d.sock, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	ln.SetUnlinkOnClose(false)
	f, err := ln.File()
	if err != nil {
		t.Fatal(err)
	}
	ln.Close() // f keeps the socket; parryd gets it as fd 3
	parryd, _ := parrybin.Build(t)
	d.logs = &parrybin.Buffer{}
	// systemd sets LISTEN_PID to the service's pid; the shell learns it with $$.
	args := append([]string{"-c", `export LISTEN_PID=$$ LISTEN_FDS=1 LISTEN_FDNAMES=control; exec "$0" "$@"`,
		parryd, "--state-dir", d.dir, "--socket", filepath.Join(d.dir, "unused.sock"), "--table", d.table}, d.extra...)
	d.cmd = p.Host.Command(t.Context(), "sh", args...)
	d.cmd.ExtraFiles = []*os.File{f}
	d.cmd.Stdout, d.cmd.Stderr = d.logs, d.logs
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	f.Close()
	d.done = make(chan struct{})
	go func() { d.cmd.Wait(); close(d.done) }()
	t.Cleanup(func() {
		d.cmd.Process.Kill()
		<-d.done
		if t.Failed() {
			t.Logf("parryd log:\n%s", d.logs.String())
		}
	})
	netns.Eventually(t, 10*time.Second, "parryd answers on the activated socket", func() bool {
		_, _, code := d.parry("status")
		return code == 0
	})
	if _, err := os.Stat(filepath.Join(d.dir, "unused.sock")); err == nil {
		t.Error("parryd created its own socket although systemd passed one")
	}
}

func TestReloadValidatesAndKeepsOldConfig(t *testing.T) {
	p := netns.NewPair(t)
	cfg := filepath.Join(t.TempDir(), "parry.yaml")
	write := func(s string) {
		if err := os.WriteFile(cfg, []byte(quietConfig+s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("allowlist: [198.51.100.1]\n")
	d := newDaemon(t, p.Host, "--config", cfg)
	d.start()
	if _, errOut, code := d.parry("block", "198.51.100.1"); code != 1 || !strings.Contains(errOut, "allowlist") {
		t.Fatalf("allowlisted: exit %d %q", code, errOut)
	}
	write("allowlist: [198.51.100.2]\n")
	d.cmd.Process.Signal(syscall.SIGHUP)
	netns.Eventually(t, 5*time.Second, "reload applies the new allowlist", func() bool {
		_, errOut, code := d.parry("block", "198.51.100.2")
		return code == 1 && strings.Contains(errOut, "allowlist")
	})
	write("allowlist: [198.51.100.3]\nbogus_key: 1\n")
	d.cmd.Process.Signal(syscall.SIGHUP)
	netns.Eventually(t, 5*time.Second, "reload refused in the log", func() bool {
		return strings.Contains(d.logs.String(), "config reload refused")
	})
	if !strings.Contains(d.logs.String(), "bogus_key") {
		t.Errorf("the refusal does not name the bad key:\n%s", d.logs.String())
	}
	if _, _, code := d.parry("block", "198.51.100.2"); code != 1 {
		t.Fatal("invalid reload replaced the config")
	}
	if !d.alive() {
		t.Fatal("parryd died on an invalid reload")
	}
	d.mustParry("block", "198.51.100.3") // not in the (kept) allowlist
}

func TestRemoveRules(t *testing.T) {
	p := netns.NewPair(t)
	d := newDaemon(t, p.Host)
	d.start()
	d.mustParry("block", p.PeerV4.String())
	out := d.mustParry("uninstall-rules")
	if !strings.Contains(out, "removed") {
		t.Errorf("uninstall-rules: %q", out)
	}
	select {
	case <-d.done:
	case <-time.After(5 * time.Second):
		t.Fatal("parryd did not stop after uninstall-rules")
	}
	if k := kernelElems(t, p.Host, d.table); k != nil {
		t.Fatalf("table still there: %v", k)
	}
	if !p.Peer.Ping(p.HostV4) {
		t.Fatal("peer blocked after uninstall-rules")
	}
	// parryd --remove-rules, and the CLI's not-running message.
	d.start()
	d.stop()
	parryd, _ := parrybin.Build(t)
	p.Host.MustRun(t, parryd, "--remove-rules", "--table", d.table, "--state-dir", d.dir, "--socket", d.sock)
	if k := kernelElems(t, p.Host, d.table); k != nil {
		t.Fatalf("table still there after parryd --remove-rules: %v", k)
	}
	_, errOut, code := d.parry("status")
	if code != 1 || !strings.Contains(errOut, "parryd is not running: start it with `systemctl start parry` or run `parryd`") {
		t.Fatalf("not running: exit %d %q", code, errOut)
	}
	// Nothing left to remove: the CLI says so instead of claiming it removed
	// a table (run inside the namespace: with parryd down the CLI acts on
	// the firewall of the namespace it runs in).
	_, parry := parrybin.Build(t)
	out, err := p.Host.Run(parry, "--socket", d.sock, "uninstall-rules", "--table", d.table)
	if err != nil || !strings.Contains(out, "nothing to remove") {
		t.Fatalf("uninstall-rules without a table: %v %q", err, out)
	}
}

func TestAuditVerifyDetectsTampering(t *testing.T) {
	p := netns.NewPair(t)
	d := newDaemon(t, p.Host)
	d.start()
	d.mustParry("block", "203.0.113.7", "--for", "1h", "--reason", "first")
	d.mustParry("block", "203.0.113.8", "--for", "1h", "--reason", "second")
	d.stop()
	log := filepath.Join(d.dir, "audit.log")
	out, errOut, code := d.parry("audit", "verify", "--log", log)
	if code != 0 || !strings.Contains(out, "audit log ok") {
		t.Fatalf("intact log: exit %d %q %q", code, out, errOut)
	}
	b, err := os.ReadFile(log)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(string(b), "\n")
	bad := -1
	for i, l := range lines {
		if strings.Contains(l, `"reason":"first"`) {
			lines[i] = strings.Replace(l, `"reason":"first"`, `"reason":"firsT"`, 1)
			bad = i + 1
		}
	}
	if bad < 0 {
		t.Fatalf("no block line in the audit log:\n%s", b)
	}
	os.WriteFile(log, []byte(strings.Join(lines, "\n")), 0o600)
	_, errOut, code = d.parry("audit", "verify", "--log", log)
	if code != 1 || !strings.Contains(errOut, fmt.Sprintf("BROKEN at line %d", bad)) {
		t.Fatalf("tampered log: exit %d %q, want line %d reported", code, errOut, bad)
	}
	// The daemon reports it too, and keeps appending.
	d.start()
	_, errOut, code = d.parry("audit", "verify")
	if code != 1 || !strings.Contains(errOut, fmt.Sprintf("line %d", bad)) {
		t.Fatalf("daemon verify of a tampered log: exit %d %q", code, errOut)
	}
}

// A second parryd started by mistake on the same socket (another state dir,
// same table) must stop before it touches the table: re-asserting its own
// empty store and allowlist would silently empty the running daemon's
// allow set (the management network, during a lockdown).
func TestSecondDaemonOnSameSocketTouchesNothing(t *testing.T) {
	p := netns.NewPair(t)
	cfg := filepath.Join(t.TempDir(), "parry.yaml")
	if err := os.WriteFile(cfg, []byte(quietConfig+"allowlist: [198.51.100.1]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	d := newDaemon(t, p.Host, "--config", cfg)
	d.start()
	d.mustParry("block", "203.0.113.7", "--for", "1h")
	parryd, _ := parrybin.Build(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	other := filepath.Join(t.TempDir(), "parry.yaml") // no allowlist
	if err := os.WriteFile(other, []byte(quietConfig), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := p.Host.Command(ctx, parryd, "--state-dir", t.TempDir(), "--socket", d.sock,
		"--table", d.table, "--config", other).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "another parryd is listening") {
		t.Fatalf("second parryd: err %v, output:\n%s", err, out)
	}
	allow, err := p.Host.Run("nft", "list", "set", "inet", d.table, "allow4")
	if err != nil || !strings.Contains(allow, "198.51.100.1") {
		t.Fatalf("the running daemon's allowlist left the kernel: %v\n%s", err, allow)
	}
	if _, ok := kernelElems(t, p.Host, d.table)["203.0.113.7"]; !ok {
		t.Fatal("the running daemon's block left the kernel")
	}
	if !d.alive() {
		t.Fatal("the running parryd died")
	}
}
