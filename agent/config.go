package agent

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"time"

	"github.com/parryhq/parry/agent/api"
	"github.com/parryhq/parry/agent/audit"
	"github.com/parryhq/parry/agent/control"
	"github.com/parryhq/parry/agent/evidence"
	"github.com/parryhq/parry/agent/feed"
	"github.com/parryhq/parry/agent/fleet"
	"github.com/parryhq/parry/agent/geoip"
	"github.com/parryhq/parry/agent/hostcheck"
	"github.com/parryhq/parry/agent/metrics"
	webhook "github.com/parryhq/parry/agent/notify"
	"github.com/parryhq/parry/agent/sources"
	"github.com/parryhq/parry/integrity"
	"github.com/parryhq/parry/response"
	"go.yaml.in/yaml/v3"
)

// DefaultConfigPath is where parryd looks for its config when --config is
// not given. The file is optional.
const DefaultConfigPath = "/etc/parry/parry.yaml"

// Config is parry.yaml. Every field has a built-in default (DefaultConfig);
// the file only needs the keys it changes. Unknown keys are an error.
//
// Adding a section: add one field with a yaml tag and your own type (whose
// zero value means "defaults"). If the type has a `Validate() error` method,
// Validate calls it and prefixes its error with the key.
type Config struct {
	Table        string         `yaml:"table"`         // nftables table name in family inet
	Priority     int            `yaml:"priority"`      // hook priority of the table's chains
	Socket       string         `yaml:"socket"`        // control socket path
	StateDir     string         `yaml:"state_dir"`     // store.db, audit.log, others' state
	Allowlist    []string       `yaml:"allowlist"`     // IPs/CIDRs never blocked
	DefaultBlock api.Duration   `yaml:"default_block"` // block duration when none is given
	MinPrefixV4  int            `yaml:"min_prefix_v4"` // broadest IPv4 prefix that may be blocked
	MinPrefixV6  int            `yaml:"min_prefix_v6"` // broadest IPv6 prefix that may be blocked
	MaxBlock     api.Duration   `yaml:"max_block"`     // longest temporary block (0: no limit)
	Prune        api.Duration   `yaml:"prune_interval"`
	Reassert     api.Duration   `yaml:"reassert_interval"` // least time between two re-assertions after foreign nftables commits
	Control      control.Config `yaml:"control"`

	Response  response.Config  `yaml:"response"`
	Integrity integrity.Config `yaml:"integrity"`
	Fleet     fleet.Config     `yaml:"fleet"`
	Sources   sources.Config   `yaml:"sources"` // log sources and detectors (docs/sources.md)
	Audit     audit.Config     `yaml:"audit"`   // rotation and retention of the audit log

	// Incident tooling (docs/incident.md).
	Evidence evidence.Config  `yaml:"evidence"`
	Notify   webhook.Config   `yaml:"notify"`
	Metrics  metrics.Config   `yaml:"metrics"`
	Check    hostcheck.Config `yaml:"check"`

	Feeds []feed.Config `yaml:"feeds"` // blocklist feeds (docs/feeds.md)
	GeoIP geoip.Config  `yaml:"geoip"` // country and ASN .mmdb files (docs/feeds.md)

	allow []netip.Prefix // parsed Allowlist, set by Validate
}

// DefaultConfig returns the built-in defaults.
func DefaultConfig() Config {
	return Config{
		Table:        "parry",
		Priority:     -10,
		Socket:       "/run/parry/parry.sock",
		StateDir:     "/var/lib/parry",
		DefaultBlock: api.Duration(24 * time.Hour),
		MinPrefixV4:  16,
		MinPrefixV6:  32,
		Prune:        api.Duration(10 * time.Second),
		Reassert:     api.Duration(30 * time.Second),
		Control: control.Config{
			SocketGroup:    "parry",
			SocketMode:     "0660",
			MaxConnections: 64,
			MaxLineBytes:   64 << 10,
			Rate:           2000,
			Burst:          4000,
			IdleTimeout:    api.Duration(5 * time.Minute),
			WriteTimeout:   api.Duration(5 * time.Second),

			MaxConnectionsPerUID: 8,
			AdminReserve:         8,
		},
	}
}

// LoadConfig reads path over the defaults and validates the result. When
// optional is set, a missing file means the defaults.
func LoadConfig(path string, optional bool) (Config, error) {
	cfg := DefaultConfig()
	b, err := os.ReadFile(path)
	switch {
	case errors.Is(err, os.ErrNotExist) && optional:
		return cfg, cfg.Validate()
	case err != nil:
		return cfg, fmt.Errorf("config: %w", err)
	}
	if err := decodeConfig(b, &cfg); err != nil {
		return cfg, fmt.Errorf("config %s: %w", path, err)
	}
	if err := cfg.Validate(); err != nil {
		return cfg, fmt.Errorf("config %s: %w", path, err)
	}
	return cfg, nil
}

func decodeConfig(b []byte, cfg *Config) error {
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(cfg); err != nil && !errors.Is(err, io.EOF) {
		return err
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		return fmt.Errorf("more than one YAML document")
	}
	return nil
}

// Validate checks every value and parses the allowlist.
func (c *Config) Validate() error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	if c.Table == "" || len(c.Table) > 64 || strings.ContainsAny(c.Table, " \t\n/\"'") {
		bad("table: %q is not a valid nftables table name", c.Table)
	}
	if c.Priority < -400 || c.Priority > 400 {
		bad("priority: %d is outside -400..400", c.Priority)
	}
	if !filepath.IsAbs(c.Socket) {
		bad("socket: %q must be an absolute path", c.Socket)
	}
	if !filepath.IsAbs(c.StateDir) {
		bad("state_dir: %q must be an absolute path", c.StateDir)
	}
	if c.MinPrefixV4 < 1 || c.MinPrefixV4 > 32 {
		bad("min_prefix_v4: %d is outside 1..32", c.MinPrefixV4)
	}
	if c.MinPrefixV6 < 1 || c.MinPrefixV6 > 128 {
		bad("min_prefix_v6: %d is outside 1..128", c.MinPrefixV6)
	}
	if c.DefaultBlock.D() <= 0 {
		bad("default_block: must be positive (a permanent block needs an explicit --permanent)")
	}
	if c.MaxBlock.D() < 0 {
		bad("max_block: must not be negative")
	}
	if c.Prune.D() < time.Second {
		bad("prune_interval: must be at least 1s")
	}
	if c.Reassert.D() < time.Second {
		bad("reassert_interval: must be at least 1s")
	}
	c.allow = c.allow[:0]
	for _, s := range c.Allowlist {
		p, err := api.ParseTarget(s)
		if err != nil {
			bad("allowlist: %v", err)
			continue
		}
		c.allow = append(c.allow, p)
	}
	ct := &c.Control
	if _, err := control.ParseMode(ct.SocketMode); err != nil {
		bad("control.socket_mode: %v", err)
	}
	if ct.MaxConnections < 1 {
		bad("control.max_connections: must be at least 1")
	}
	if ct.MaxLineBytes < 1024 || ct.MaxLineBytes > 16<<20 {
		bad("control.max_line_bytes: %d is outside 1024..16777216", ct.MaxLineBytes)
	}
	if ct.Rate <= 0 || ct.Burst < 1 {
		bad("control.rate and control.burst: must be positive")
	}
	if ct.IdleTimeout.D() < time.Second {
		bad("control.idle_timeout: must be at least 1s")
	}
	if ct.WriteTimeout.D() < 100*time.Millisecond {
		bad("control.write_timeout: must be at least 100ms")
	}
	if ct.MaxConnectionsPerUID < 1 {
		bad("control.max_connections_per_uid: must be at least 1")
	}
	if ct.AdminReserve < 0 || ct.AdminReserve >= ct.MaxConnections {
		bad("control.admin_reserve: %d must be at least 0 and less than control.max_connections (%d)", ct.AdminReserve, ct.MaxConnections)
	}
	feeds, err := feed.ValidateAll(c.Feeds)
	if err != nil {
		bad("feeds: %w", err)
	} else {
		c.Feeds = feeds
	}
	errs = append(errs, validateSections(c)...)
	return errors.Join(errs...)
}

// validateSections calls Validate() error on every section type that has one.
func validateSections(c *Config) []error {
	var errs []error
	v := reflect.ValueOf(c).Elem()
	t := v.Type()
	for i := range t.NumField() {
		f := t.Field(i)
		if !f.IsExported() || f.Type.Kind() != reflect.Struct {
			continue
		}
		if val, ok := v.Field(i).Addr().Interface().(interface{ Validate() error }); ok {
			if err := val.Validate(); err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", strings.Split(f.Tag.Get("yaml"), ",")[0], err))
			}
		}
	}
	return errs
}

// AllowPrefixes returns the parsed allowlist (after Validate).
func (c *Config) AllowPrefixes() []netip.Prefix { return c.allow }
