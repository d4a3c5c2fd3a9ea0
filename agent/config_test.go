package agent

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func writeConfig(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "parry.yaml")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestConfigDefaultsWithoutFile(t *testing.T) {
	cfg, err := LoadConfig(filepath.Join(t.TempDir(), "missing.yaml"), true)
	if err != nil {
		t.Fatalf("missing optional file: %v", err)
	}
	if cfg.Table != "parry" || cfg.Priority != -10 || cfg.MinPrefixV4 != 16 || cfg.MinPrefixV6 != 32 ||
		cfg.Control.MaxLineBytes != 64<<10 || cfg.DefaultBlock.D() != 24*time.Hour {
		t.Errorf("defaults: %+v", cfg)
	}
	if _, err := LoadConfig(filepath.Join(t.TempDir(), "missing.yaml"), false); err == nil {
		t.Error("missing explicit --config file: want an error")
	}
}

func TestConfigFile(t *testing.T) {
	p := writeConfig(t, `
table: parry_test
priority: -20
allowlist: [198.51.100.10, "2001:db8:1::/48"]
default_block: 7d
min_prefix_v4: 20
control:
  admin_groups: [wheel]
  max_line_bytes: 32768
response: {}
integrity: {}
`)
	cfg, err := LoadConfig(p, false)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Table != "parry_test" || cfg.Priority != -20 || cfg.DefaultBlock.D() != 7*24*time.Hour || cfg.MinPrefixV4 != 20 ||
		cfg.MinPrefixV6 != 32 || cfg.Control.MaxLineBytes != 32768 || cfg.Control.MaxConnections != 64 {
		t.Errorf("got %+v", cfg)
	}
	if got := cfg.AllowPrefixes(); len(got) != 2 || got[0].String() != "198.51.100.10/32" {
		t.Errorf("allowlist %v", got)
	}
}

func TestConfigRefusesBadInput(t *testing.T) {
	tests := []struct{ body, want string }{
		{"tabel: x\n", "line 1: field tabel not found"},
		{"control:\n  max_conections: 3\n", "line 2: field max_conections not found"},
		{"default_block: 7 days\n", "line 1: parse duration"},
		{"default_block: 0s\n", "default_block: must be positive"},
		{"allowlist: [example.com]\n", "allowlist"},
		{"min_prefix_v4: 40\n", "min_prefix_v4"},
		{"socket: relative.sock\n", "socket"},
		{"table: 'bad name'\n", "table"},
		{"control:\n  socket_mode: rw\n", "socket_mode"},
		{"priority: [1]\n", "line 1"},
		{"a: 1\n---\nb: 2\n", ""},
		// sources: a bad pattern names the detector, the pattern and its line in parry.yaml
		{"sources:\n  detectors:\n    - name: myapp\n      kind: auth_failure\n      patterns:\n        - '^ok <IP>$'\n        - '^bad (<IP>$'\n",
			`sources: detectors: detector "myapp": invalid detector: pattern 2 (line 7)`},
		{"sources:\n  detectors:\n    - name: myapp\n      kind: auth_failure\n      patterns: ['^login from <IP>']\n", "must be anchored"},
		{"sources:\n  journal:\n    detectors: [no-such]\n", `journal.detectors: no detector "no-such"`},
		{"sources:\n  files:\n    - path: /srv/app.log\n", "no detector reads /srv/app.log"},
		{"sources:\n  files:\n    - path: relative.log\n      detectors: [sshd]\n", "must be absolute"},
		{"sources:\n  detectors:\n    - name: x\n      kind: auth_failure\n      patterns: ['^a <IP>$']\n      bogus: 1\n", "line 6"},
	}
	for _, tt := range tests {
		_, err := LoadConfig(writeConfig(t, tt.body), false)
		if err == nil {
			t.Errorf("config %q: want an error", tt.body)
			continue
		}
		if !strings.Contains(err.Error(), tt.want) {
			t.Errorf("config %q: error %q does not mention %q", tt.body, err, tt.want)
		}
	}
}

// TestConfigDurationsInEverySection: docs/config.md promises Go durations
// plus d and w in every section; each section reads "7d" and "2w", and a
// bad duration is refused with the line of its key.
func TestConfigDurationsInEverySection(t *testing.T) {
	const day = 24 * time.Hour
	tests := []struct {
		section, body string
		got           func(Config) time.Duration
		want          time.Duration
	}{
		{"top", "max_block: 2w\n", func(c Config) time.Duration { return c.MaxBlock.D() }, 14 * day},
		{"response", "response:\n  escalation:\n    max: 7d\n", func(c Config) time.Duration { return c.Response.Escalation.Max.D() }, 7 * day},
		{"response.rules", "response:\n  rules:\n    - {name: r, kind: k, action: block, window: 1d, duration: 2w}\n",
			func(c Config) time.Duration { return c.Response.Rules[0].Duration.D() + c.Response.Rules[0].Window.D() }, 15 * day},
		{"response.sender_block_cap", "response:\n  sender_block_cap:\n    per: 1d\n", func(c Config) time.Duration { return c.Response.SenderBlockCap.Per.D() }, day},
		{"integrity", "integrity:\n  scan_interval: 1d\n", func(c Config) time.Duration { return c.Integrity.ScanInterval.D() }, day},
		{"notify", "notify:\n  max_backoff: 1d\n", func(c Config) time.Duration { return c.Notify.MaxBackoff.D() }, day},
		{"fleet", "fleet:\n  unblock_ttl: 2w\n", func(c Config) time.Duration { return c.Fleet.UnblockTTL.D() }, 14 * day},
		// evidence's durations are bounded to minutes: the syntax is the same.
		{"evidence", "evidence:\n  timeout: 0d3m\n", func(c Config) time.Duration { return c.Evidence.Timeout.D() }, 3 * time.Minute},
		{"check", "check:\n  cert_warn: 2w\n", func(c Config) time.Duration { return c.Check.CertWarn.D() }, 14 * day},
	}
	for _, tt := range tests {
		t.Run(tt.section, func(t *testing.T) {
			cfg, err := LoadConfig(writeConfig(t, tt.body), false)
			if err != nil {
				t.Fatalf("%q: %v", tt.body, err)
			}
			if got := tt.got(cfg); got != tt.want {
				t.Errorf("%q: %s, want %s", tt.body, got, tt.want)
			}
			// The same key with a bad value: refused, naming the key's line.
			lines := strings.Split(strings.TrimSuffix(tt.body, "\n"), "\n")
			last := len(lines) - 1
			bad := strings.NewReplacer("7d", "7 days", "2w", "2 weeks", "1d", "1 day", "0d3m", "3 minutes").Replace(lines[last])
			lines[last] = bad
			_, err = LoadConfig(writeConfig(t, strings.Join(lines, "\n")+"\n"), false)
			if want := fmt.Sprintf("line %d:", len(lines)); err == nil || !strings.Contains(err.Error(), want) {
				t.Errorf("%q: err = %v, want one naming %q", bad, err, want)
			}
		})
	}
}
