package e2e

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/parryhq/parry/test/daemon"
	"github.com/parryhq/parry/test/netns"
)

// TestEveryJSONHasOK: every parry command with --json (the list in
// agent/cli/testdata/json_commands.txt) prints one JSON object with "ok",
// true exactly when the command exits 0, against a real parryd; so do the
// refusals (a loopback block) and report --format json.
func TestEveryJSONHasOK(t *testing.T) {
	ns := netns.New(t)
	watched := t.TempDir()
	if err := os.WriteFile(filepath.Join(watched, "app.conf"), []byte("x=1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	feedFile := filepath.Join(watched, "feed.txt")
	if err := os.WriteFile(feedFile, []byte("198.51.100.0/24\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	d := daemon.New(t, ns, daemon.Options{Config: "integrity:\n  paths:\n    - path: " + watched + "\n  package_manager: none\n" +
		"feeds:\n  - name: local\n    path: " + feedFile + "\n"})
	d.Start()

	var evidenceID string
	steps := []struct {
		args   []string
		wantOK bool
	}{
		{[]string{"status"}, true},
		{[]string{"events", "--kind", "lockdown"}, true}, // before any lockdown: the replay is empty, one object (the live marker)
		{[]string{"block", "203.0.113.7", "--for", "1h", "--reason", "e2e"}, true},
		{[]string{"block", "127.0.0.1"}, false}, // refused: loopback
		{[]string{"list"}, true},
		{[]string{"why", "203.0.113.7"}, true},
		{[]string{"why", "192.0.2.99"}, false}, // not blocked
		{[]string{"feed", "list"}, true},
		{[]string{"feed", "refresh", "local"}, true},
		{[]string{"unblock", "203.0.113.7"}, true},
		{[]string{"signal", "auth_failure", "--ip", "203.0.113.9", "--source", "e2e"}, true},
		{[]string{"lockdown", "--for", "1m", "--allow", "192.0.2.0/24", "--reason", "e2e"}, true},
		{[]string{"release"}, true},
		{[]string{"audit", "verify"}, true},
		{[]string{"evidence", "capture", "--reason", "e2e"}, true},
		{[]string{"evidence", "list"}, true},
		{[]string{"evidence", "show", "ID"}, true},
		{[]string{"integrity", "baseline"}, true},
		{[]string{"integrity", "status"}, true},
		{[]string{"integrity", "check"}, true},
		{[]string{"integrity", "accept", filepath.Join(watched, "app.conf")}, true},
		{[]string{"integrity", "verify-packages", "coreutils"}, true}, // runs in the CLI, over this machine's dpkg database
		{[]string{"report"}, true},
		{[]string{"report", "--format", "json", "--since", "1h"}, true}, // same shape without --json
		{[]string{"check"}, false},                                      // ok follows the exit code (the host's posture)
		{[]string{"source", "status"}, true},
		{[]string{"source", "test", d.ConfigPath, "--detector", "sshd"}, true}, // runs in the CLI
	}
	covered := map[string]bool{}
	for _, s := range steps {
		name := s.args[0]
		if len(s.args) > 1 && (name == "audit" || name == "evidence" || name == "integrity" || name == "feed" || name == "source") {
			name += " " + s.args[1]
		}
		covered[name] = true
		args := s.args
		if args[0] == "evidence" && args[1] == "show" {
			args = []string{"evidence", "show", evidenceID}
		}
		if !strings.Contains(strings.Join(args, " "), "--format json") {
			args = append(args, "--json")
		}
		stdout, stderr, code := d.Parry(args...)
		var obj map[string]json.RawMessage
		if err := json.Unmarshal([]byte(stdout), &obj); err != nil {
			t.Errorf("parry %s: not one JSON object: %v\nstdout %q\nstderr %q", strings.Join(args, " "), err, stdout, stderr)
			continue
		}
		t.Logf("parry %s  # exit %d\n%s", strings.Join(args, " "), code, stdout)
		var ok bool
		if err := json.Unmarshal(obj["ok"], &ok); err != nil {
			t.Errorf("parry %s: no boolean \"ok\": %s", strings.Join(args, " "), stdout)
			continue
		}
		if ok != (code == 0) {
			t.Errorf("parry %s: ok %v but exit %d: %s", strings.Join(args, " "), ok, code, stdout)
		}
		if s.args[0] != "check" && ok != s.wantOK {
			t.Errorf("parry %s: ok %v, want %v: %s\nstderr %s", strings.Join(args, " "), ok, s.wantOK, stdout, stderr)
		}
		if s.args[0] == "evidence" && s.args[1] == "capture" {
			json.Unmarshal(obj["id"], &evidenceID)
		}
	}
	list, err := os.ReadFile(filepath.Join("..", "..", "agent", "cli", "testdata", "json_commands.txt"))
	if err != nil {
		t.Fatal(err)
	}
	for l := range strings.Lines(string(list)) {
		if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "#") && !covered[l] {
			t.Errorf("parry %s --json is not exercised here", l)
		}
	}
}
