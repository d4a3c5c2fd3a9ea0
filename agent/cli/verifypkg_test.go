package cli

import (
	"bytes"
	"context"
	"crypto/md5"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// pkgRoot is a fake system root with one package, its binary (named with
// control characters, as a hostile package could) and a conffile.
func pkgRoot(t *testing.T) string {
	t.Helper()
	root := t.TempDir()
	sum := func(s string) string { h := md5.Sum([]byte(s)); return hex.EncodeToString(h[:]) }
	files := map[string]string{
		"usr/bin/tool\x1b]0;pwned\x07\rOK": "tool",
		"etc/tool.conf":                    "conf",
		"var/lib/dpkg/status": "Package: tool\nStatus: install ok installed\nArchitecture: amd64\nConffiles:\n /etc/tool.conf " +
			sum("conf") + "\n\n",
		"var/lib/dpkg/info/tool.md5sums": sum("tool") + "  usr/bin/tool\x1b]0;pwned\x07\rOK\n",
	}
	for rel, content := range files {
		p := filepath.Join(root, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

func runParry(args ...string) (int, string, string) {
	var stdout, stderr bytes.Buffer
	code := Main(context.Background(), append([]string{"--socket", "/nonexistent/s.sock"}, args...), strings.NewReader(""), &stdout, &stderr)
	return code, stdout.String(), stderr.String()
}

// TestVerifyPackagesCLI: runs without parryd (the socket does not exist);
// exit 0 clean or with only a conffile note, 1 when a package file
// differs, 2 for usage; control characters in names never reach the
// terminal raw.
func TestVerifyPackagesCLI(t *testing.T) {
	root := pkgRoot(t)
	if code, out, errOut := runParry("integrity", "verify-packages", "--root", root); code != ExitOK || !strings.Contains(out, "all match") {
		t.Fatalf("clean: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	os.WriteFile(filepath.Join(root, "etc/tool.conf"), []byte("edited"), 0o644)
	code, out, _ := runParry("integrity", "verify-packages", "--root", root)
	if code != ExitOK || !strings.Contains(out, "note       "+root+"/etc/tool.conf (tool)") || !strings.Contains(out, "conffile edited") {
		t.Fatalf("edited conffile: exit %d, want 0 with a note; stdout %q", code, out)
	}
	bin := filepath.Join(root, "usr/bin/tool\x1b]0;pwned\x07\rOK")
	os.WriteFile(bin, []byte("trojan"), 0o755)
	code, out, _ = runParry("integrity", "verify-packages", "--root", root)
	if code != ExitFailed || !strings.Contains(out, "CHANGED") || !strings.Contains(out, `tool\u001b]0;pwned\u0007\rOK (tool)`) {
		t.Fatalf("changed binary: exit %d, want 1 naming it escaped; stdout %q", code, out)
	}
	if strings.ContainsAny(out, "\x1b\x07\r") {
		t.Errorf("control characters reached the output: %q", out)
	}
	code, out, _ = runParry("integrity", "verify-packages", "--root", root, "--json")
	var res struct {
		OK       bool `json:"ok"`
		Clean    bool `json:"clean"`
		Findings []struct {
			Kind, Severity, Path string
		} `json:"findings"`
	}
	if err := json.Unmarshal([]byte(out), &res); err != nil || code != ExitFailed || res.OK || res.Clean || len(res.Findings) != 2 {
		t.Fatalf("--json: exit %d, %v, %+v", code, err, res)
	}
	if code, _, errOut := runParry("integrity", "verify-packages", "--root", root, "nosuch"); code != ExitUsage {
		t.Errorf("unknown package: exit %d, want 2; stderr %q", code, errOut)
	}
	if code, _, _ := runParry("integrity", "verify-packages", "--workers", "-1"); code != ExitUsage {
		t.Errorf("--workers -1: exit %d, want 2", code)
	}
	if code, _, errOut := runParry("integrity", "verify-packages", "--root", t.TempDir()); code != ExitFailed || !strings.Contains(errOut, "no dpkg database") {
		t.Errorf("no database: exit %d, stderr %q", code, errOut)
	}

}
