package agent

import (
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
