package agent

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/parryhq/parry/integrity"
)

func TestIntegrityConfigStrict(t *testing.T) {
	for doc, want := range map[string]string{
		"integrity:\n  hash: md5\n":                                     "integrity.hash",
		"integrity:\n  bogus: 1\n":                                      "bogus",
		"integrity:\n  paths:\n    - path: etc\n":                       "absolute",
		"integrity:\n  rules:\n    - path: /x\n      mode_max: \"9\"\n": "mode_max",
		"integrity:\n  max_hash_size: huge\n":                           "integrity.max_hash_size",
		"integrity:\n  burst_interval: 1ms\n":                           "integrity.burst_interval",
		"integrity:\n  max_open_findings: -1\n":                         "integrity.max_open_findings",
	} {
		p := filepath.Join(t.TempDir(), "parry.yaml")
		if err := os.WriteFile(p, []byte(doc), 0o600); err != nil {
			t.Fatal(err)
		}
		_, err := LoadConfig(p, false)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: got %v, want an error about %s", doc, err, want)
		}
	}
	p := filepath.Join(t.TempDir(), "parry.yaml")
	ok := "integrity:\n  paths:\n    - path: /etc\n      exclude: [\"*.swp\"]\n  rules:\n    - path: /etc/shadow\n      mode_max: \"0640\"\n      owner: root\n  scan_interval: 30m\n  io_rate: 50MiB\n" +
		"  max_hash_size: 512MiB\n  burst_threshold: 20\n  burst_interval: 30s\n  max_open_findings: 500\n"
	if err := os.WriteFile(p, []byte(ok), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadConfig(p, false); err != nil {
		t.Fatalf("valid integrity config refused: %v", err)
	}
}

// TestIntegrityBusyCode: a monitor that could not be had in time answers
// with the protocol code busy, not bad_request.
func TestIntegrityBusyCode(t *testing.T) {
	err := integrityErr(fmt.Errorf("status: %w (check running for 9s)", integrity.ErrBusy))
	if CodeOf(err) != CodeBusy {
		t.Fatalf("code %q, want %q", CodeOf(err), CodeBusy)
	}
}
