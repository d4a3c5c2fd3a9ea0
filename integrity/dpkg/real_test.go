package dpkg

import (
	"context"
	"os"
	"os/exec"
	"testing"
)

// TestVerifyRealPackages runs over this machine's own dpkg database: a few
// base packages, which nothing on a test machine edits, are clean, and
// dpkg-query agrees on how many files they have.
func TestVerifyRealPackages(t *testing.T) {
	if _, err := os.Stat("/var/lib/dpkg/status"); err != nil {
		t.Skipf("no dpkg database on this machine: %v", err)
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root: some package files are readable by root only")
	}
	pkgs := []string{"coreutils", "dpkg", "libc6", "bash"}
	res, err := Verify(context.Background(), Options{Packages: pkgs})
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range res.Findings {
		if f.Severity != SeverityLow {
			t.Errorf("finding on a base package: %+v", f)
		}
	}
	if !res.Clean || res.Packages != len(pkgs) || res.Files < 200 || res.Bytes == 0 {
		t.Errorf("result %+v: want clean, %d packages, at least 200 files", res, len(pkgs))
	}
	// The same count of md5sums lines dpkg-query reports (conffiles aside).
	if out, err := exec.Command("dpkg-query", "--control-show", "coreutils", "md5sums").Output(); err == nil {
		n := 0
		for _, c := range out {
			if c == '\n' {
				n++
			}
		}
		one, err := Verify(context.Background(), Options{Packages: []string{"coreutils"}})
		if err != nil {
			t.Fatal(err)
		}
		if one.Files-one.Conffiles != n {
			t.Errorf("coreutils: %d files checked besides conffiles, dpkg-query lists %d", one.Files-one.Conffiles, n)
		}
	}
	t.Logf("%d packages, %d files, %d bytes in %s", res.Packages, res.Files, res.Bytes, res.Took)
}
