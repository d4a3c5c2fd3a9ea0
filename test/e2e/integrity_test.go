package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/parryhq/parry/test/daemon"
	"github.com/parryhq/parry/test/netns"
)

type integrityStatus struct {
	Running         bool     `json:"running"`
	Error           string   `json:"not_watching"`
	BaselineDigest  string   `json:"baseline_digest"`
	BaselineEntries int      `json:"baseline_entries"`
	Watches         int      `json:"watches"`
	Roots           []string `json:"roots"`
	Hash            string   `json:"hash"`
	Open            []struct {
		Kind        string `json:"kind"`
		Path        string `json:"path"`
		Severity    string `json:"severity"`
		Remediation string `json:"remediation"`
	} `json:"open"`
}

func integrityOf(t testing.TB, d *daemon.Daemon) integrityStatus {
	t.Helper()
	var st integrityStatus
	out := d.MustParry("integrity", "status", "--json")
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("integrity status --json: %v\n%s", err, out)
	}
	return st
}

// TestIntegrityEndToEnd runs parryd with a watched directory: the first
// start records a baseline (digest in the audit chain), a changed file shows
// in `parry integrity status` within a second and makes `check` exit 1,
// `accept` makes it the new normal, a permission rule puts a mode back, and
// a tampered baseline is refused after a restart.
func TestIntegrityEndToEnd(t *testing.T) {
	netns.RequireRoot(t)
	ns := netns.New(t)
	watched := t.TempDir()
	for i := range 20 {
		must(t, os.WriteFile(filepath.Join(watched, fmt.Sprintf("file%02d.conf", i)), []byte("v1\n"), 0o644))
	}
	must(t, os.WriteFile(filepath.Join(watched, "secret"), []byte("key\n"), 0o600))
	cfg := filepath.Join(t.TempDir(), "parry.yaml")
	must(t, os.WriteFile(cfg, []byte(fmt.Sprintf(`integrity:
  paths:
    - path: %s
      exclude: ["*.swp"]
  rules:
    - path: "%s/secret"
      mode_max: "0600"
      owner: root
      remediate: true
  package_manager: none
`, watched, watched)), 0o600))
	d := newDaemon(t, ns, "--config", cfg)
	d.Start()

	var st integrityStatus
	netns.Eventually(t, 10*time.Second, "first-start baseline and watcher running", func() bool {
		st = integrityOf(t, d)
		return st.Running && st.BaselineEntries == 22 && st.Error == ""
	})
	if st.Watches != 1 || len(st.Open) != 0 {
		t.Fatalf("status after start: %+v", st)
	}
	if out, _, code := d.Parry("integrity", "check"); code != 0 {
		t.Fatalf("check on an unchanged tree: exit %d\n%s", code, out)
	}
	audit, err := os.ReadFile(d.AuditPath())
	must(t, err)
	if !strings.Contains(string(audit), `"integrity_baseline"`) || !strings.Contains(string(audit), st.BaselineDigest) {
		t.Fatalf("baseline digest %s not in the audit chain:\n%s", st.BaselineDigest, audit)
	}

	// A change shows up in status (the latency itself is measured by the
	// benchmark harness, test/integrity-bench -mode latency, not asserted here).
	changed := filepath.Join(watched, "file07.conf")
	start := time.Now()
	must(t, os.WriteFile(changed, []byte("tampered\n"), 0o644))
	netns.Eventually(t, 15*time.Second, "finding in parry integrity status", func() bool {
		for _, f := range integrityOf(t, d).Open {
			if f.Path == changed && f.Kind == "changed" {
				return true
			}
		}
		return false
	})
	t.Logf("finding visible in `parry integrity status` %s after the write", time.Since(start).Round(time.Millisecond))
	human := d.MustParry("integrity", "status")
	if !strings.Contains(human, "integrity: watching") || !strings.Contains(human, changed) || !strings.Contains(human, "hash") {
		t.Errorf("parry integrity status:\n%s", human)
	}
	t.Logf("parry integrity status:\n%s", human)
	out, _, code := d.Parry("integrity", "check")
	t.Logf("parry integrity check:\n%s", out)
	if code != 1 || !strings.Contains(out, "changed") || !strings.Contains(out, changed) || !strings.Contains(out, "1 finding") {
		t.Errorf("parry integrity check: exit %d\n%s", code, out)
	}
	out, _, code = d.Parry("integrity", "check", "--json")
	if code != 1 || !strings.Contains(out, changed) || !strings.Contains(out, `"attr": "hash"`) {
		t.Fatalf("check after a change: exit %d\n%s", code, out)
	}
	netns.Eventually(t, 5*time.Second, "finding in the audit log", func() bool {
		b, _ := os.ReadFile(d.AuditPath())
		return strings.Contains(string(b), `"integrity_finding"`) && strings.Contains(string(b), changed)
	})
	// The finding went to the policy as an integrity_violation signal, and
	// the built-in rule (notify) decided on it.
	netns.Eventually(t, 5*time.Second, "integrity_violation signal decided by the policy", func() bool {
		b, _ := os.ReadFile(d.AuditPath())
		for _, line := range strings.Split(string(b), "\n") {
			// The decision the built-in rule made, with the signal as its cause.
			if strings.Contains(line, `"event":"notify"`) && strings.Contains(line, `"rule":"integrity-violation"`) &&
				strings.Contains(line, `"integrity_violation"`) && strings.Contains(line, changed) {
				return true
			}
		}
		return false
	})

	// The permission rule puts the mode back at once.
	secret := filepath.Join(watched, "secret")
	must(t, os.Chmod(secret, 0o644))
	netns.Eventually(t, 5*time.Second, "secret back to 0600", func() bool {
		fi, err := os.Stat(secret)
		return err == nil && fi.Mode().Perm() == 0o600
	})

	// Accept both: check is clean again.
	d.MustParry("integrity", "accept", changed, secret)
	if out, _, code := d.Parry("integrity", "check"); code != 0 {
		t.Fatalf("check after accept: exit %d\n%s", code, out)
	}
	if out, errOut, code := d.Parry("integrity", "accept", "/nonexistent/x"); code != 1 {
		t.Fatalf("accept outside the selection: exit %d\n%s%s", code, out, errOut)
	}

	// Tamper with the stored baseline and restart: refused, never trusted.
	d.Stop()
	bl := filepath.Join(d.StateDir, "integrity.baseline")
	data, err := os.ReadFile(bl)
	must(t, err)
	data[len(data)-1] ^= 0xff
	must(t, os.WriteFile(bl, data, 0o600))
	d.Start()
	netns.Eventually(t, 10*time.Second, "tampered baseline reported", func() bool {
		st = integrityOf(t, d)
		return strings.Contains(st.Error, "tampering")
	})
	_, errOut, code := d.Parry("integrity", "check")
	if code != 1 || !strings.Contains(errOut, "baseline_tampered") {
		t.Fatalf("check with a tampered baseline: exit %d\n%s", code, errOut)
	}
	// A new baseline brings the watcher back.
	d.MustParry("integrity", "baseline")
	netns.Eventually(t, 10*time.Second, "watcher running on the new baseline", func() bool {
		st = integrityOf(t, d)
		return st.Running && st.Error == ""
	})
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
