package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/parryhq/parry/test/daemon"
	"github.com/parryhq/parry/test/netns"
	"github.com/parryhq/parry/test/parrybin"
)

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
	d.Start()
	d.MustParry("block", "203.0.113.7", "--for", "1h")
	d.Stop()
	p.Host.MustRun(t, "nft", "delete", "table", "inet", d.Table)

	t.Setenv("WATCHDOG_USEC", "600000") // 0.6 s: pings every 0.2-1 s
	d.Start()                           // returns at READY=1
	ch := d.Notifications()
	if _, ok := kernelElems(t, p.Host, d.Table)["203.0.113.7"]; !ok {
		t.Fatal("READY=1 before the store was re-asserted into the kernel")
	}
	st := waitFor(t, ch, "STATUS=", 5*time.Second)
	if !strings.Contains(st, "1 active blocks") || !strings.Contains(st, "table ok") {
		t.Errorf("status line %q", st)
	}
	waitFor(t, ch, "WATCHDOG=1", 3*time.Second)
	waitFor(t, ch, "WATCHDOG=1", 3*time.Second)
	d.Signal(syscall.SIGTERM)
	waitFor(t, ch, "STOPPING=1", 5*time.Second)
	<-d.Exited()
	if code := d.ExitCode(); code != 0 {
		t.Fatalf("exit %d after SIGTERM", code)
	}
	if _, ok := kernelElems(t, p.Host, d.Table)["203.0.113.7"]; !ok {
		t.Fatal("SIGTERM removed the table; it must stay")
	}
}

func TestSocketActivation(t *testing.T) {
	p := netns.NewPair(t)
	unused := filepath.Join(t.TempDir(), "unused.sock")
	// The harness creates the socket and passes it as fd 3; parryd's own
	// --socket points elsewhere, where nothing must appear.
	d := daemon.New(t, p.Host, daemon.Options{Config: quietConfig, Args: []string{"--socket", unused}, SocketActivation: true})
	d.Start()
	if _, _, code := d.Parry("status"); code != 0 {
		t.Fatal("parryd does not answer on the activated socket")
	}
	if _, err := os.Stat(unused); err == nil {
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
	d.Start()
	if _, errOut, code := d.Parry("block", "198.51.100.1"); code != 1 || !strings.Contains(errOut, "allowlist") {
		t.Fatalf("allowlisted: exit %d %q", code, errOut)
	}
	write("allowlist: [198.51.100.2]\n")
	d.Signal(syscall.SIGHUP)
	netns.Eventually(t, 5*time.Second, "reload applies the new allowlist", func() bool {
		_, errOut, code := d.Parry("block", "198.51.100.2")
		return code == 1 && strings.Contains(errOut, "allowlist")
	})
	write("allowlist: [198.51.100.3]\nbogus_key: 1\n")
	d.Signal(syscall.SIGHUP)
	netns.Eventually(t, 5*time.Second, "reload refused in the log", func() bool {
		return strings.Contains(d.Log(), "config reload refused")
	})
	if !strings.Contains(d.Log(), "bogus_key") {
		t.Errorf("the refusal does not name the bad key:\n%s", d.Log())
	}
	if _, _, code := d.Parry("block", "198.51.100.2"); code != 1 {
		t.Fatal("invalid reload replaced the config")
	}
	if !d.Alive() {
		t.Fatal("parryd died on an invalid reload")
	}
	d.MustParry("block", "198.51.100.3") // not in the (kept) allowlist
}

func TestRemoveRules(t *testing.T) {
	p := netns.NewPair(t)
	d := newDaemon(t, p.Host)
	d.Start()
	d.MustParry("block", p.PeerV4.String())
	out := d.MustParry("uninstall-rules")
	if !strings.Contains(out, "removed") {
		t.Errorf("uninstall-rules: %q", out)
	}
	select {
	case <-d.Exited():
	case <-time.After(5 * time.Second):
		t.Fatal("parryd did not stop after uninstall-rules")
	}
	if k := kernelElems(t, p.Host, d.Table); k != nil {
		t.Fatalf("table still there: %v", k)
	}
	if !p.Peer.Ping(p.HostV4) {
		t.Fatal("peer blocked after uninstall-rules")
	}
	// parryd --remove-rules, and the CLI's not-running message.
	d.Start()
	d.Stop()
	parryd, _ := parrybin.Build(t)
	p.Host.MustRun(t, parryd, "--remove-rules", "--table", d.Table, "--state-dir", d.StateDir, "--socket", d.Socket)
	if k := kernelElems(t, p.Host, d.Table); k != nil {
		t.Fatalf("table still there after parryd --remove-rules: %v", k)
	}
	_, errOut, code := d.Parry("status")
	if code != 1 || !strings.Contains(errOut, "parryd is not running: start it with `systemctl start parry` or run `parryd`") {
		t.Fatalf("not running: exit %d %q", code, errOut)
	}
	// Nothing left to remove: the CLI says so instead of claiming it removed
	// a table (run inside the namespace: with parryd down the CLI acts on
	// the firewall of the namespace it runs in).
	_, parry := parrybin.Build(t)
	out, err := p.Host.Run(parry, "--socket", d.Socket, "uninstall-rules", "--table", d.Table)
	if err != nil || !strings.Contains(out, "nothing to remove") {
		t.Fatalf("uninstall-rules without a table: %v %q", err, out)
	}
}

func TestAuditVerifyDetectsTampering(t *testing.T) {
	p := netns.NewPair(t)
	d := newDaemon(t, p.Host)
	d.Start()
	d.MustParry("block", "203.0.113.7", "--for", "1h", "--reason", "first")
	d.MustParry("block", "203.0.113.8", "--for", "1h", "--reason", "second")
	d.Stop()
	log := d.AuditPath()
	out, errOut, code := d.Parry("audit", "verify", "--log", log)
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
	_, errOut, code = d.Parry("audit", "verify", "--log", log)
	if code != 1 || !strings.Contains(errOut, fmt.Sprintf("BROKEN at line %d", bad)) {
		t.Fatalf("tampered log: exit %d %q, want line %d reported", code, errOut, bad)
	}
	// The daemon reports it too, and keeps appending.
	d.Start()
	_, errOut, code = d.Parry("audit", "verify")
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
	d.Start()
	d.MustParry("block", "203.0.113.7", "--for", "1h")
	parryd, _ := parrybin.Build(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	other := filepath.Join(t.TempDir(), "parry.yaml") // no allowlist
	if err := os.WriteFile(other, []byte(quietConfig), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := p.Host.Command(ctx, parryd, "--state-dir", t.TempDir(), "--socket", d.Socket,
		"--table", d.Table, "--config", other).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "another parryd is listening") {
		t.Fatalf("second parryd: err %v, output:\n%s", err, out)
	}
	allow, err := p.Host.Run("nft", "list", "set", "inet", d.Table, "allow4")
	if err != nil || !strings.Contains(allow, "198.51.100.1") {
		t.Fatalf("the running daemon's allowlist left the kernel: %v\n%s", err, allow)
	}
	if _, ok := kernelElems(t, p.Host, d.Table)["203.0.113.7"]; !ok {
		t.Fatal("the running daemon's block left the kernel")
	}
	if !d.Alive() {
		t.Fatal("the running parryd died")
	}
}
