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
