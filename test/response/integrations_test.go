package response_test

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/parryhq/parry/test/netns"
	"github.com/parryhq/parry/test/parrybin"
)

// repoFile returns the path of a file in the repository.
func repoFile(t *testing.T, rel string) string {
	_, here, _, _ := runtime.Caller(0)
	p := filepath.Join(filepath.Dir(here), "..", "..", rel)
	if _, err := os.Stat(p); err != nil {
		t.Fatal(err)
	}
	return p
}

// fail2banAction reads the shipped action: its actionban and actionunban
// commands with the tags fail2ban substitutes, for jail name and address
// ip, with the [Init] values but the CLI and socket of the test.
type fail2banAction struct {
	ban, unban string
	init       map[string]string
}

func readFail2banAction(t *testing.T) fail2banAction {
	raw, err := os.ReadFile(repoFile(t, "packaging/fail2ban/action.d/parry.conf"))
	if err != nil {
		t.Fatal(err)
	}
	a := fail2banAction{init: map[string]string{}}
	for _, m := range regexp.MustCompile(`(?m)^(\w+) = (.*)$`).FindAllSubmatch(raw, -1) {
		switch k, v := string(m[1]), string(m[2]); k {
		case "actionban":
			a.ban = v
		case "actionunban":
			a.unban = v
		default:
			a.init[k] = v
		}
	}
	if a.ban == "" || a.unban == "" || a.init["kind"] == "" || a.init["socket"] != "/run/parry/parry.sock" {
		t.Fatalf("parry.conf: ban %q unban %q init %v", a.ban, a.unban, a.init)
	}
	return a
}

// run runs one action command the way fail2ban does (tags substituted,
// /bin/sh), with the test's CLI and socket as a jail's action options
// (parry[socket=...]) would set them.
func (a fail2banAction) run(t *testing.T, cmdline, parry, socket, jail, ip, bantime string) {
	t.Helper()
	cmd := strings.NewReplacer("<parry>", parry, "<socket>", socket, "<kind>", a.init["kind"],
		"<ip>", ip, "<name>", jail, "<failures>", "5", "<bantime>", bantime).Replace(cmdline)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if out, err := exec.CommandContext(ctx, "/bin/sh", "-c", cmd).CombinedOutput(); err != nil {
		t.Fatalf("%q: %v: %s", cmd, err, out)
	}
}

// TestFail2banAction runs the actionban and actionunban commands of the
// shipped fail2ban action the way fail2ban does: the ban drops the peer's
// packets for fail2ban's bantime, with the jail as the block's source; the
// unban lifts it; an unban lifts nothing another cause holds (an admin's
// block, another jail's ban).
func TestFail2banAction(t *testing.T) {
	netns.RequireRoot(t)
	top := newTopology(t)
	d := newDaemon(t, top.host, "")
	d.Start()
	_, parry := parrybin.Build(t)
	a := readFail2banAction(t)
	peer := top.peerAddr.String()

	a.run(t, a.ban, parry, d.Socket, "sshd", peer, "600")
	netns.Eventually(t, 5*time.Second, "banned peer dropped", func() bool {
		return !top.peer.CanConnect(top.hostAddr, port)
	})
	if left, ok := blockLeft(t, d, peer); !ok || left < 9*time.Minute || left > 10*time.Minute {
		t.Errorf("block: %v left (%v), want fail2ban's bantime, 10m", left, ok)
	}
	if list := d.MustParry("list"); !strings.Contains(list, "fail2ban-sshd") {
		t.Errorf("parry list does not show the jail as the source:\n%s", list)
	}

	// Other causes' blocks stay.
	d.MustParry("block", "203.0.113.50", "--for", "1h", "--reason", "admin")
	a.run(t, a.unban, parry, d.Socket, "sshd", "203.0.113.50", "600")
	a.run(t, a.ban, parry, d.Socket, "nginx", "203.0.113.51", "600")
	a.run(t, a.unban, parry, d.Socket, "sshd", "203.0.113.51", "600")
	for _, ip := range []string{"203.0.113.50", "203.0.113.51"} {
		if !inKernel(t, top.host, ip) {
			t.Errorf("%s: lifted by another jail's unban", ip)
		}
	}
	a.run(t, a.unban, parry, d.Socket, "nginx", "203.0.113.51", "600")
	if inKernel(t, top.host, "203.0.113.51") {
		t.Error("203.0.113.51: its own jail's unban did not lift it")
	}

	a.run(t, a.unban, parry, d.Socket, "sshd", peer, "600")
	if inKernel(t, top.host, peer) {
		t.Errorf("%s still in the kernel after the unban", peer)
	}
	netns.Eventually(t, 5*time.Second, "unbanned peer connects", func() bool {
		return top.peer.CanConnect(top.hostAddr, port)
	})
}

// TestPythonClient sends signals with the shipped Python example.
func TestPythonClient(t *testing.T) {
	netns.RequireRoot(t)
	py, err := exec.LookPath("python3")
	if err != nil {
		t.Fatal("python3 not found: install python3 (apt-get install -y python3)")
	}
	ns := netns.New(t)
	d := newDaemon(t, ns, "")
	d.Start()
	script := repoFile(t, "packaging/examples/parry_signal.py")
	var last map[string]any
	for range 5 {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		cmd := exec.CommandContext(ctx, py, script, "auth_failure", "203.0.113.9", "alice")
		cmd.Env = append(os.Environ(), "PARRY_SOCKET="+d.Socket)
		out, err := cmd.Output()
		cancel()
		if err != nil {
			t.Fatalf("python client: %v: %s", err, out)
		}
		if err := json.Unmarshal(out, &last); err != nil {
			t.Fatalf("python client output %q: %v", out, err)
		}
	}
	if last["ok"] != true || last["outcome"] != "decided" {
		t.Errorf("fifth signal from Python: %v", last)
	}
	if _, ok := blockLeft(t, d, "203.0.113.9"); !ok {
		t.Error("203.0.113.9 not blocked after five signals from Python")
	}
}

// inKernel reports whether addr is in the table's block4 set (nft, the
// kernel's own view).
func inKernel(t *testing.T, ns *netns.NS, addr string) bool {
	t.Helper()
	out, err := ns.Run("nft", "-j", "list", "set", "inet", "parry", "block4")
	if err != nil {
		t.Fatalf("nft list set: %v: %s", err, out)
	}
	return strings.Contains(out, `"`+addr+`"`)
}

// TestFail2banRoundTrip: Debian's real fail2ban (a private server: its own
// config directory, socket, pid file and in-memory database; never the
// host's service) with the shipped action installed in a jail as a user
// would, the CLI and socket given as action options. fail2ban-client's
// banip reaches the kernel with fail2ban's bantime and the jail as the
// block's source; unbanip takes it out again.
func TestFail2banRoundTrip(t *testing.T) {
	netns.RequireRoot(t)
	server, err := exec.LookPath("fail2ban-server")
	if err != nil {
		t.Fatal("fail2ban-server not found: install fail2ban (test/ci/deps.sh)")
	}
	top := newTopology(t)
	d := newDaemon(t, top.host, "")
	d.Start()
	_, parry := parrybin.Build(t)
	peer := top.peerAddr.String()

	dir := t.TempDir()
	conf := filepath.Join(dir, "conf")
	if out, err := exec.Command("cp", "-r", "/etc/fail2ban", conf).CombinedOutput(); err != nil {
		t.Fatalf("copy /etc/fail2ban: %v: %s", err, out)
	}
	os.RemoveAll(filepath.Join(conf, "jail.d")) // the host's jail choices (Debian's enables sshd)
	if err := os.Mkdir(filepath.Join(conf, "jail.d"), 0o755); err != nil {
		t.Fatal(err)
	}
	action, err := os.ReadFile(repoFile(t, "packaging/fail2ban/action.d/parry.conf"))
	if err != nil {
		t.Fatal(err)
	}
	logPath := filepath.Join(dir, "auth.log")
	sock := filepath.Join(dir, "fail2ban.sock")
	for name, text := range map[string]string{
		"action.d/parry.conf": string(action),
		"fail2ban.local": "[Definition]\nloglevel = INFO\nlogtarget = " + filepath.Join(dir, "fail2ban.log") +
			"\nsocket = " + sock + "\npidfile = " + filepath.Join(dir, "fail2ban.pid") + "\ndbfile = :memory:\n",
		"jail.local": "[DEFAULT]\nenabled = false\n\n[parrytest]\nenabled = true\nfilter = sshd\nbackend = polling\nlogpath = " + logPath +
			"\nbantime = 600\naction = parry[parry=\"" + parry + "\", socket=\"" + d.Socket + "\"]\n",
		"../auth.log": "",
	} {
		if err := os.WriteFile(filepath.Join(conf, name), []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	srv := exec.CommandContext(ctx, server, "-xf", "-c", conf, "-s", sock, "-p", filepath.Join(dir, "fail2ban.pid"))
	out := &strings.Builder{}
	srv.Stdout, srv.Stderr = out, out
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cancel()
		_ = srv.Wait()
		if t.Failed() {
			log, _ := os.ReadFile(filepath.Join(dir, "fail2ban.log"))
			t.Logf("fail2ban-server output:\n%s\nfail2ban.log:\n%s", out, log)
		}
	})
	client := func(args ...string) (string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		b, err := exec.CommandContext(ctx, "fail2ban-client", append([]string{"-c", conf, "-s", sock}, args...)...).CombinedOutput()
		return string(b), err
	}
	netns.Eventually(t, 30*time.Second, "fail2ban-server answering with the jail", func() bool {
		out, err := client("status", "parrytest")
		return err == nil && strings.Contains(out, "Currently banned")
	})

	if out, err := client("set", "parrytest", "banip", peer); err != nil {
		t.Fatalf("banip: %v: %s", err, out)
	}
	netns.Eventually(t, 10*time.Second, "fail2ban's ban in the kernel", func() bool { return inKernel(t, top.host, peer) })
	if top.peer.CanConnect(top.hostAddr, port) {
		t.Error("the banned peer still connects")
	}
	if left, ok := blockLeft(t, d, peer); !ok || left < 9*time.Minute || left > 10*time.Minute {
		t.Errorf("block: %v left (%v), want fail2ban's bantime, 10m", left, ok)
	}
	if list := d.MustParry("list"); !strings.Contains(list, "fail2ban-parrytest") {
		t.Errorf("parry list does not show the jail:\n%s", list)
	}

	if out, err := client("set", "parrytest", "unbanip", peer); err != nil {
		t.Fatalf("unbanip: %v: %s", err, out)
	}
	netns.Eventually(t, 10*time.Second, "fail2ban's unban out of the kernel", func() bool { return !inKernel(t, top.host, peer) })
	netns.Eventually(t, 5*time.Second, "the unbanned peer connects", func() bool { return top.peer.CanConnect(top.hostAddr, port) })
}
