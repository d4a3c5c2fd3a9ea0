package cli

import (
	"bytes"
	"encoding/json"
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
	printFindings(&b, []api.Finding{{Severity: "medium", Kind: "added", Path: "/app/evil\ncritical removed        /etc/shadow", Detail: "x\ny"}})
	for _, l := range strings.Split(b.String(), "\n") {
		if strings.HasPrefix(l, "critical") || l == "y" {
			t.Fatalf("a file name broke out of its line:\n%s", b.String())
		}
	}
}
