package boot

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// maxExposure is the highest `systemd-analyze security` exposure accepted
// for parry.service.
const maxExposure = 2.5

// repoRoot is the module root, two levels above this package.
func repoRoot(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "go.mod")); err != nil {
		t.Fatalf("module root not found at %s: %v", root, err)
	}
	return root
}

// unitCopies copies the unit files into a temporary directory, with
// /usr/bin/parryd pointing at a stub executable there, so that
// systemd-analyze can check the ExecStart/ExecReload paths on a machine
// where parry is not installed.
func unitCopies(t *testing.T) (service, socket string) {
	t.Helper()
	dir := t.TempDir()
	stub := filepath.Join(dir, "parryd")
	if err := os.WriteFile(stub, []byte("#!/bin/sh\nexit 0\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"parry.service", "parry.socket"} {
		b, err := os.ReadFile(filepath.Join(repoRoot(t), "systemd", name))
		if err != nil {
			t.Fatal(err)
		}
		b = bytes.ReplaceAll(b, []byte("/usr/bin/parryd"), []byte(stub))
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return filepath.Join(dir, "parry.service"), filepath.Join(dir, "parry.socket")
}

// TestUnitsVerify runs systemd-analyze verify on the units. It exits 0 on
// unknown keys and typos, so anything it prints is a failure.
func TestUnitsVerify(t *testing.T) {
	requireTools(t, map[string]string{"systemd-analyze": "systemd"})
	service, socket := unitCopies(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, "systemd-analyze", "verify", "--man=no", service, socket)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil || stderr.Len() > 0 || len(bytes.TrimSpace(out)) > 0 {
		t.Fatalf("systemd-analyze verify: %v\nstdout: %s\nstderr: %s", err, out, stderr.String())
	}
}

var exposureRE = regexp.MustCompile(`Overall exposure level for parry\.service: ([0-9.]+)`)

// TestUnitsSecurity checks the hardening of parry.service with
// systemd-analyze security --offline and logs the figure.
func TestUnitsSecurity(t *testing.T) {
	requireTools(t, map[string]string{"systemd-analyze": "systemd"})
	service, _ := unitCopies(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, "systemd-analyze", "security", "--offline=yes", "--no-pager", service).CombinedOutput()
	if err != nil {
		t.Fatalf("systemd-analyze security: %v\n%s", err, out)
	}
	m := exposureRE.FindSubmatch(out)
	if m == nil {
		t.Fatalf("no exposure level in output:\n%s", out)
	}
	exposure, err := strconv.ParseFloat(string(m[1]), 64)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("systemd-analyze security --offline=yes parry.service: exposure %.1f (target <= %.1f)", exposure, maxExposure)
	if exposure > maxExposure {
		var open []string
		for _, line := range strings.Split(string(out), "\n") {
			if strings.HasPrefix(line, "✗") {
				open = append(open, line)
			}
		}
		t.Errorf("exposure %.1f > %.1f; open items:\n%s", exposure, maxExposure, strings.Join(open, "\n"))
	}
}
