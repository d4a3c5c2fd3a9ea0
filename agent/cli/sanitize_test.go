package cli

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/parryhq/parry/agent/api"
)

func TestTermSafe(t *testing.T) {
	tests := []struct{ in, want string }{
		{"plain\ttext\n", "plain\ttext\n"},
		{"é ü 漢字 ok\n", "é ü 漢字 ok\n"},
		{"\x1b[2Jcleared", `\u001b[2Jcleared`},
		{"title\x1b]0;pwned\x07", `title\u001b]0;pwned\u0007`},
		{"cr\rover", `cr\u000dover`},
		{"nul\x00del\x7f", `nul\u0000del\u007f`},
		{"c1 \u009b31m csi", `c1 \u009b31m csi`},
	}
	for _, tt := range tests {
		var b bytes.Buffer
		n, err := termSafe{&b}.Write([]byte(tt.in))
		if err != nil || n != len(tt.in) {
			t.Fatalf("Write(%q) = %d, %v", tt.in, n, err)
		}
		if b.String() != tt.want {
			t.Errorf("Write(%q) wrote %q, want %q", tt.in, b.String(), tt.want)
		}
	}
	// JSON that went through it is still valid and means the same.
	var b bytes.Buffer
	if err := printJSON(termSafe{&b}, map[string]string{"reason": "a\u009bb\x1bc"}); err != nil {
		t.Fatal(err)
	}
	var back map[string]string
	if err := json.Unmarshal(b.Bytes(), &back); err != nil || back["reason"] != "a\u009bb\x1bc" {
		t.Fatalf("JSON through termSafe: %q -> %v, %v", b.String(), back, err)
	}
}

// A file name with a newline under a watched directory cannot fake a
// finding line in 'parry integrity status/check'.
func TestFindingsKeepFileNamesOnOneLine(t *testing.T) {
	var b bytes.Buffer
	printFindings(&b, []api.Finding{{Severity: "medium", Kind: "added", Path: "/app/evil\ncritical removed        /etc/shadow", Detail: "x\ny"}}, false, false)
	for _, l := range strings.Split(b.String(), "\n") {
		if strings.HasPrefix(l, "critical") || l == "y" {
			t.Fatalf("a file name broke out of its line:\n%s", b.String())
		}
	}
}

// Diff lines and actor fields come from files and processes: through the
// CLI's writer they cannot move the cursor or fake a line of their own,
// and the diff is cut unless --diff.
func TestFindingDiffAndActorEscaped(t *testing.T) {
	var diff []string
	for i := range 30 {
		diff = append(diff, fmt.Sprintf("+line %d", i))
	}
	diff[1] = "-Password\x1b[2J\rno\ncritical removed /etc/shadow"
	f := api.Finding{Severity: "high", Kind: "changed", Path: "/etc/ssh/sshd_config", Diff: diff,
		Actor: &api.Actor{PID: 42, Exe: "/tmp/x\x1b]0;pwned\x07", UID: 1000, User: "alice", LoginUID: -1}}
	for _, full := range []bool{false, true} {
		var b bytes.Buffer
		printFindings(termSafe{&b}, []api.Finding{f}, full, true)
		out := b.String()
		if strings.ContainsAny(out, "\x1b\r\x07") {
			t.Fatalf("control characters reached the terminal:\n%q", out)
		}
		for _, l := range strings.Split(out, "\n") {
			if strings.HasPrefix(l, "critical") {
				t.Fatalf("a diff line broke out of its line:\n%s", out)
			}
		}
		if !strings.Contains(out, `- Password\u001b[2J\rno\ncritical removed /etc/shadow`) || !strings.Contains(out, "by pid 42 /tmp/x") {
			t.Errorf("diff or actor not shown:\n%s", out)
		}
		if cut := strings.Contains(out, "… 10 more lines"); cut == full {
			t.Errorf("full %v: cut %v:\n%s", full, cut, out)
		}
	}
}
