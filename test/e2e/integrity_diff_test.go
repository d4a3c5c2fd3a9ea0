package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/parryhq/parry/test/netns"
)

// TestIntegrityDiffReachesAuditAndReport: an edited file selected by
// integrity.diff shows its changed lines in `parry integrity status`, in
// the audit log's integrity_finding line and in `parry report`; a secret
// file's content appears in none of them.
func TestIntegrityDiffReachesAuditAndReport(t *testing.T) {
	netns.RequireRoot(t)
	ns := netns.New(t)
	watched := t.TempDir()
	conf := filepath.Join(watched, "sshd_config")
	must(t, os.WriteFile(conf, []byte("Port 22\nPasswordAuthentication no\nUsePAM yes\n"), 0o644))
	secret := filepath.Join(watched, "host.key")
	must(t, os.WriteFile(secret, []byte("s3cr3t-before\n"), 0o600))
	cfg := filepath.Join(t.TempDir(), "parry.yaml")
	must(t, os.WriteFile(cfg, []byte(fmt.Sprintf(`integrity:
  paths:
    - path: %s
  rules: []
  diff: ["%s/*"]
  package_manager: none
`, watched, watched)), 0o600))
	d := newDaemon(t, ns, "--config", cfg)
	d.Start()
	netns.Eventually(t, 10*time.Second, "first-start baseline and watcher running", func() bool {
		st := integrityOf(t, d)
		return st.Running && st.BaselineEntries == 3
	})

	must(t, os.WriteFile(conf, []byte("Port 22\nPasswordAuthentication yes\nUsePAM yes\n"), 0o644))
	must(t, os.WriteFile(secret, []byte("s3cr3t-after\n"), 0o600))
	var human string
	defer func() { t.Logf("parry integrity status:\n%s", human) }()
	netns.Eventually(t, 15*time.Second, "both findings in parry integrity status", func() bool {
		human = d.MustParry("integrity", "status")
		return strings.Contains(human, "+ PasswordAuthentication yes") && strings.Contains(human, secret)
	})
	if !strings.Contains(human, "- PasswordAuthentication no") {
		t.Errorf("status lacks the removed line:\n%s", human)
	}
	if !strings.Contains(human, "secret: not shown") {
		t.Errorf("status does not say the secret's content is not shown:\n%s", human)
	}

	d.MustParry("audit", "verify") // syncs nothing, but the chain must hold
	var audit string
	netns.Eventually(t, 5*time.Second, "the diff in the audit log", func() bool {
		b, err := os.ReadFile(d.AuditPath())
		must(t, err)
		audit = string(b)
		return strings.Contains(audit, `+PasswordAuthentication yes`)
	})
	report := d.MustParry("report", "--since", "1h", "--format", "json")
	if !strings.Contains(report, "+PasswordAuthentication yes") {
		t.Errorf("report lacks the diff:\n%s", report)
	}
	for what, text := range map[string]string{"status": human, "audit log": audit, "report": report} {
		if strings.Contains(text, "s3cr3t") {
			t.Errorf("the secret's content is in the %s", what)
		}
	}
}
