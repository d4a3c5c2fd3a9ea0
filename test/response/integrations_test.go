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

// TestFail2banAction runs the actionban command of the shipped fail2ban
// action the way fail2ban does (tags substituted, run by /bin/sh) and
// checks that the banned peer's packets are dropped.
func TestFail2banAction(t *testing.T) {
	netns.RequireRoot(t)
	top := newTopology(t)
	d := newDaemon(t, top.host, "")
	d.Start()
	_, parry := parrybin.Build(t)

	raw, err := os.ReadFile(repoFile(t, "packaging/fail2ban/action.d/parry.conf"))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^actionban = (.+)$`).FindSubmatch(raw)
	if m == nil {
		t.Fatal("no actionban in parry.conf")
	}
	kind := regexp.MustCompile(`(?m)^kind = (\S+)$`).FindSubmatch(raw)
	if kind == nil {
		t.Fatal("no kind in [Init]")
	}
	cmdline := strings.NewReplacer("<parry>", parry+" --socket "+d.Socket, "<kind>", string(kind[1]),
		"<ip>", top.peerAddr.String(), "<name>", "sshd", "<failures>", "5").Replace(string(m[1]))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if out, err := exec.CommandContext(ctx, "/bin/sh", "-c", cmdline).CombinedOutput(); err != nil {
		t.Fatalf("actionban %q: %v: %s", cmdline, err, out)
	}
	netns.Eventually(t, 5*time.Second, "banned peer dropped", func() bool {
		return !top.peer.CanConnect(top.hostAddr, port)
	})
	if left, ok := blockLeft(t, d, top.peerAddr.String()); !ok || left < 59*time.Minute {
		t.Errorf("block: %v left (%v), want about 1h", left, ok)
	}
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
