package main

import (
	"os/exec"
	"strings"
	"testing"
)

// TestCLIDoesNotLinkTheDaemon: parry links the protocol's leaf package
// (agent/api), the client, its own report renderer, and three small packages
// of the standard library and x/sys only: the audit log's chain verifier (agent/audit, for
// `parry audit verify --log FILE` without the daemon) and the one-request
// table delete of `parry uninstall-rules` without the daemon
// (firewall/droptable), and the dpkg verifier of `parry integrity
// verify-packages` (integrity/dpkg; standard library and x/sys), and the detectors of
// `parry source test` (agent/detect, with response for its signal type). None of the
// daemon's dependencies.
func TestCLIDoesNotLinkTheDaemon(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", ".").CombinedOutput()
	if err != nil {
		t.Skipf("go list: %v: %s", err, out)
	}
	allowed := map[string]bool{
		"github.com/parryhq/parry/cmd/parry":               true,
		"github.com/parryhq/parry/agent/cli":               true,
		"github.com/parryhq/parry/agent/api":               true,
		"github.com/parryhq/parry/agent/client":            true,
		"github.com/parryhq/parry/agent/audit":             true,
		"github.com/parryhq/parry/agent/cli/reportfmt":     true,
		"github.com/parryhq/parry/agent/cli/reportfmt/svg": true, // the HTML report's charts (v-report): standard library only
		"github.com/parryhq/parry/firewall/droptable":      true,
		"github.com/parryhq/parry/integrity/dpkg":          true,
		"github.com/parryhq/parry/agent/detect":            true, // parry source test runs the detectors without the daemon: regexp, yaml, response
		"github.com/parryhq/parry/response":                true, // the detectors' signal type; imports agent/api only
	}
	forbidden := []string{"go.etcd.io/bbolt", "github.com/nats-io/", "github.com/prometheus/", "github.com/shirou/gopsutil",
		"github.com/fsnotify/", "github.com/coreos/go-systemd", "github.com/google/nftables", "github.com/mdlayher/"}
	pkgs := strings.Fields(string(out))
	for _, p := range pkgs {
		if strings.HasPrefix(p, "github.com/parryhq/parry/") && !allowed[p] {
			t.Errorf("parry links %s: the CLI imports only agent/api, agent/client and the packages listed here", p)
		}
		for _, f := range forbidden {
			if strings.HasPrefix(p, f) {
				t.Errorf("parry links %s, a dependency of the daemon", p)
			}
		}
	}
	t.Logf("%d packages", len(pkgs))
}
