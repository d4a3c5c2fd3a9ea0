package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/parryhq/parry/test/netns"
)

// TestSIGHUPReloadsIntegrity: a real parryd, reloaded with SIGHUP, watches
// a path added to integrity.paths at once (a file created there is a
// finding, no restart), and a new integrity.hash is listed as needing a
// restart in the config_reload audit line.
func TestSIGHUPReloadsIntegrity(t *testing.T) {
	netns.RequireRoot(t)
	ns := netns.New(t)
	a, b := t.TempDir(), t.TempDir()
	must(t, os.WriteFile(filepath.Join(a, "f"), []byte("x"), 0o644))
	cfg := filepath.Join(t.TempDir(), "parry.yaml")
	write := func(extra string, paths ...string) {
		var ps strings.Builder
		for _, p := range paths {
			fmt.Fprintf(&ps, "    - path: %s\n", p)
		}
		must(t, os.WriteFile(cfg, []byte("integrity:\n  paths:\n"+ps.String()+"  rules: []\n  package_manager: none\n"+extra), 0o600))
	}
	write("", a)
	d := newDaemon(t, ns, "--config", cfg)
	d.Start()
	netns.Eventually(t, 10*time.Second, "watcher running", func() bool { return integrityOf(t, d).Running })

	write("  hash: blake3\n", a, b)
	d.Signal(syscall.SIGHUP)
	netns.Eventually(t, 10*time.Second, "config_reload audited", func() bool { return len(d.AuditEvents("config_reload")) == 1 })
	rel := d.AuditEvents("config_reload")[0]
	if rel["ok"] != true || !strings.Contains(fmt.Sprint(rel["needs_restart"]), "integrity.hash") {
		t.Fatalf("config_reload %v", rel)
	}
	if st := integrityOf(t, d); !slices.Contains(st.Roots, b) || st.Hash != "sha256" {
		t.Fatalf("after the reload: roots %v, hash %s", st.Roots, st.Hash)
	}
	created := filepath.Join(b, "new.conf")
	must(t, os.WriteFile(created, []byte("y"), 0o644))
	netns.Eventually(t, 10*time.Second, "finding in the added path", func() bool {
		return slices.ContainsFunc(d.AuditEvents("integrity_finding"), func(f map[string]any) bool { return f["path"] == created })
	})
}
