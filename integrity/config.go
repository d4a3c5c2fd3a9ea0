// Package integrity watches files: a baseline, a parallel scanner, a
// real-time watcher and permission rules. Findings become signals of kind
// integrity_violation for the response policy.
package integrity

import (
	"errors"
	"fmt"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/parryhq/parry/agent/api"
)

// Config is the `integrity:` section of parry.yaml. The zero value means the
// built-in defaults (see WithDefaults).
type Config struct {
	// Enabled turns the watcher and scheduled checks on. Default true.
	Enabled *bool `yaml:"enabled"`
	// Paths are the roots to record and watch. Default: DefaultPaths.
	Paths []PathSpec `yaml:"paths"`
	// Exclude applies to every path: globs without "/" match a base name,
	// globs starting with "/" match the whole path ("**" spans directories).
	Exclude []string `yaml:"exclude"`
	// Rules are permission rules checked on every scan and event.
	// Default: DefaultRules. An explicit empty list means none.
	Rules []Rule `yaml:"rules"`
	// Hash is the content hash: "sha256" (default) or "blake3".
	Hash string `yaml:"hash"`
	// Workers hash files in parallel. 0 means one per CPU.
	Workers int `yaml:"workers"`
	// IORate limits the bytes per second the scanner reads, e.g. "50MiB".
	// Empty or "0" means unlimited.
	IORate string `yaml:"io_rate"`
	// Nice is the scheduling niceness (0..19) of the hashing threads.
	Nice int `yaml:"nice"`
	// ScanInterval is the time between scheduled full checks. Default 1h;
	// "0s" turns scheduled checks off (the watcher still runs).
	ScanInterval *api.Duration `yaml:"scan_interval"`
	// FullCheckInterval is how often a scheduled check re-hashes every
	// file; the others re-read only the files whose inode, size, mtime or
	// ctime changed. Default 24h; "0s" makes every scheduled check full.
	FullCheckInterval *api.Duration `yaml:"full_check_interval"`
	// Debounce is how long a path must stay quiet before it is re-checked
	// after an event. Default 50ms.
	Debounce api.Duration `yaml:"debounce"`
	// PackageManager is "dpkg" (default) or "none".
	PackageManager string `yaml:"package_manager"`
	// MaxHashSize is the largest file whose content is hashed, e.g.
	// "1GiB" (the default); a larger file is recorded by its metadata only
	// and reported as not_hashed. "0" means no limit.
	MaxHashSize string `yaml:"max_hash_size"`
	// BurstThreshold is how many `added` findings one directory reports
	// one by one per BurstInterval; the rest are aggregated into one
	// `burst` finding per directory and interval. Default 100.
	BurstThreshold int `yaml:"burst_threshold"`
	// BurstInterval is the interval of BurstThreshold. Default 10s.
	BurstInterval *time.Duration `yaml:"burst_interval"`
	// MaxOpenFindings bounds the findings kept open (status, evidence);
	// beyond it new ones are reported but not kept, and counted. Default
	// 10000.
	MaxOpenFindings int `yaml:"max_open_findings"`
	// PackageRoot is the root the package database and the files it lists
	// live under (<root>/var/lib/dpkg/info/*.md5sums). Default "/".
	PackageRoot string `yaml:"package_root"`
	// Diff selects the files whose last accepted content is kept
	// (compressed, under the state directory) so that a content change
	// comes with a unified diff: globs on the whole path ("**" spans
	// directories). Default: DefaultDiff. An explicit empty list keeps
	// nothing. Secret files are never kept or shown.
	Diff []string `yaml:"diff"`
	// Attribution names the process behind each change (fanotify; needs
	// CAP_SYS_ADMIN, which the shipped unit does not grant). Default false.
	Attribution *bool `yaml:"attribution"`
}

// PathSpec is one root of the selection.
type PathSpec struct {
	Path string `yaml:"path"`
	// Recursive descends into subdirectories (default true). When false, a
	// directory and its direct entries are recorded.
	Recursive *bool `yaml:"recursive"`
	// Exclude applies under this root only; same syntax as Config.Exclude.
	Exclude []string `yaml:"exclude"`
}

// Rule is a permission rule on the files whose path matches the glob Path.
type Rule struct {
	// Path is a glob on the whole path; "**" spans directories.
	Path string `yaml:"path"`
	// ModeMax is the most permissive mode allowed, in octal ("0640").
	// Bits outside it (including setuid/setgid/sticky) are a violation.
	ModeMax string `yaml:"mode_max"`
	// Owner and Group are user/group names or numeric ids.
	Owner string `yaml:"owner"`
	Group string `yaml:"group"`
	// Deny lists forbidden properties: world_readable, world_writable,
	// group_writable, setuid, setgid.
	Deny []string `yaml:"deny"`
	// Remediate puts the mode and owner back at once (chmod/chown).
	Remediate bool `yaml:"remediate"`
	// Severity of a violation: low, medium, high (default), critical.
	Severity string `yaml:"severity"`
	// Secret marks the matching files as holding secrets: their content is
	// never kept or shown in a diff (a rule denying world_readable marks
	// them too).
	Secret bool `yaml:"secret"`
}

// Hash algorithm names.
const (
	HashSHA256 = "sha256"
	HashBLAKE3 = "blake3"
)

// Built-in defaults.
const (
	DefaultDebounce     = 50 * time.Millisecond
	DefaultScanInterval = time.Hour
	DefaultFullCheck    = 24 * time.Hour
	DefaultMaxHashSize  = "1GiB"
)

// DefaultPaths is the selection on a Debian host: configuration, system
// binaries (parry's own included), systemd units and root's SSH keys.
func DefaultPaths() []PathSpec {
	return []PathSpec{
		{Path: "/etc", Exclude: []string{"/etc/mtab", "/etc/adjtime", "/etc/ld.so.cache", "*.swp", "*~"}},
		{Path: "/usr/bin"},
		{Path: "/usr/sbin"},
		{Path: "/usr/lib/systemd"},
		{Path: "/root/.ssh"},
	}
}

// DefaultRules are the permission rules used when the config names none.
func DefaultRules() []Rule {
	return []Rule{
		{Path: "/etc/shadow", ModeMax: "0640", Owner: "root"},
		{Path: "/etc/gshadow", ModeMax: "0640", Owner: "root"},
		{Path: "/etc/passwd", ModeMax: "0644", Owner: "root"},
		{Path: "/etc/group", ModeMax: "0644", Owner: "root"},
		{Path: "/etc/sudoers", ModeMax: "0440", Owner: "root"},
		{Path: "/root/.ssh/authorized_keys", Owner: "root", Deny: []string{"group_writable", "world_writable"}},
		{Path: "/etc/parry/**", Deny: []string{"world_writable"}},
		{Path: "/usr/bin/**", Deny: []string{"world_writable"}},
		{Path: "/usr/sbin/**", Deny: []string{"world_writable"}},
	}
}

// Defaults is the configuration used when parry.yaml has no integrity
// section.
func Defaults() Config { return Config{}.WithDefaults() }

// WithDefaults returns c with every unset knob given its default.
func (c Config) WithDefaults() Config {
	if c.Enabled == nil {
		t := true
		c.Enabled = &t
	}
	if c.Paths == nil {
		c.Paths = DefaultPaths()
	}
	if c.Rules == nil {
		c.Rules = DefaultRules()
	}
	if c.Hash == "" {
		c.Hash = HashSHA256
	}
	if c.Workers == 0 {
		c.Workers = runtime.NumCPU()
	}
	if c.ScanInterval == nil {
		d := api.Duration(DefaultScanInterval)
		c.ScanInterval = &d
	}
	if c.FullCheckInterval == nil {
		d := api.Duration(DefaultFullCheck)
		c.FullCheckInterval = &d
	}
	if c.Debounce == 0 {
		c.Debounce = api.Duration(DefaultDebounce)
	}
	if c.PackageManager == "" {
		c.PackageManager = "dpkg"
	}
	if c.PackageRoot == "" {
		c.PackageRoot = "/"
	}
	if c.MaxHashSize == "" {
		c.MaxHashSize = DefaultMaxHashSize
	}
	if c.BurstThreshold == 0 {
		c.BurstThreshold = DefaultBurstThreshold
	}
	if c.BurstInterval == nil {
		d := DefaultBurstInterval
		c.BurstInterval = &d
	}
	if c.MaxOpenFindings == 0 {
		c.MaxOpenFindings = DefaultMaxOpenFindings
	}
	if c.Diff == nil {
		c.Diff = DefaultDiff()
	}
	if c.Attribution == nil {
		f := false
		c.Attribution = &f
	}
	return c
}

// Validate reports the first problem in c (after defaults are applied the
// same checks hold). Every error names the offending key.
func (c Config) Validate() error {
	var errs []error
	for i, p := range c.Paths {
		if !filepath.IsAbs(p.Path) || filepath.Clean(p.Path) != p.Path {
			errs = append(errs, fmt.Errorf("integrity.paths[%d].path %q: must be an absolute, clean path", i, p.Path))
		}
		for _, g := range p.Exclude {
			if err := validGlob(g); err != nil {
				errs = append(errs, fmt.Errorf("integrity.paths[%d].exclude %q: %w", i, g, err))
			}
		}
	}
	for _, g := range c.Exclude {
		if err := validGlob(g); err != nil {
			errs = append(errs, fmt.Errorf("integrity.exclude %q: %w", g, err))
		}
	}
	for i, r := range c.Rules {
		if err := r.validate(); err != nil {
			errs = append(errs, fmt.Errorf("integrity.rules[%d] (%s): %w", i, r.Path, err))
		}
	}
	switch c.Hash {
	case "", HashSHA256, HashBLAKE3:
	default:
		errs = append(errs, fmt.Errorf("integrity.hash %q: want sha256 or blake3", c.Hash))
	}
	if c.Workers < 0 || c.Workers > 256 {
		errs = append(errs, fmt.Errorf("integrity.workers %d: want 0 (one per CPU) to 256", c.Workers))
	}
	if _, err := ParseByteRate(c.IORate); err != nil {
		errs = append(errs, fmt.Errorf("integrity.io_rate: %w", err))
	}
	if _, err := ParseByteSize(c.MaxHashSize); err != nil {
		errs = append(errs, fmt.Errorf("integrity.max_hash_size: %w", err))
	}
	if c.BurstThreshold < 0 || c.BurstThreshold > 100000 {
		errs = append(errs, fmt.Errorf("integrity.burst_threshold %d: want 1..100000", c.BurstThreshold))
	}
	if c.BurstInterval != nil && (*c.BurstInterval < time.Second || *c.BurstInterval > time.Hour) {
		errs = append(errs, fmt.Errorf("integrity.burst_interval %s: want 1s..1h", *c.BurstInterval))
	}
	if c.MaxOpenFindings < 0 || c.MaxOpenFindings > 1000000 {
		errs = append(errs, fmt.Errorf("integrity.max_open_findings %d: want 1..1000000", c.MaxOpenFindings))
	}
	if c.Nice < 0 || c.Nice > 19 {
		errs = append(errs, fmt.Errorf("integrity.nice %d: want 0..19", c.Nice))
	}
	if c.ScanInterval != nil && *c.ScanInterval != 0 && c.ScanInterval.D() < time.Minute {
		errs = append(errs, fmt.Errorf("integrity.scan_interval %s: want 0 (off) or at least 1m", *c.ScanInterval))
	}
	if c.FullCheckInterval != nil && *c.FullCheckInterval != 0 && c.FullCheckInterval.D() < time.Minute {
		errs = append(errs, fmt.Errorf("integrity.full_check_interval %s: want 0 (every check full) or at least 1m", *c.FullCheckInterval))
	}
	if c.Debounce < 0 || c.Debounce.D() > 10*time.Second {
		errs = append(errs, fmt.Errorf("integrity.debounce %s: want 0..10s", c.Debounce))
	}
	switch c.PackageManager {
	case "", "dpkg", "none":
	default:
		errs = append(errs, fmt.Errorf("integrity.package_manager %q: want dpkg or none", c.PackageManager))
	}
	for _, g := range c.Diff {
		if err := validGlob(g); err != nil || !strings.HasPrefix(g, "/") {
			errs = append(errs, fmt.Errorf("integrity.diff %q: want an absolute glob", g))
		}
	}
	if c.PackageRoot != "" && !filepath.IsAbs(c.PackageRoot) {
		errs = append(errs, fmt.Errorf("integrity.package_root %q: must be absolute", c.PackageRoot))
	}
	return errors.Join(errs...)
}

func (r Rule) validate() error {
	if !strings.HasPrefix(r.Path, "/") {
		return errors.New("path: must be an absolute glob")
	}
	if err := validGlob(r.Path); err != nil {
		return fmt.Errorf("path: %w", err)
	}
	if r.ModeMax != "" {
		if _, err := parseMode(r.ModeMax); err != nil {
			return fmt.Errorf("mode_max: %w", err)
		}
	}
	for _, d := range r.Deny {
		if _, ok := denyBits[d]; !ok {
			return fmt.Errorf("deny %q: want one of world_readable, world_writable, group_writable, setuid, setgid", d)
		}
	}
	switch r.Severity {
	case "", "low", "medium", "high", "critical":
	default:
		return fmt.Errorf("severity %q: want low, medium, high or critical", r.Severity)
	}
	if r.ModeMax == "" && r.Owner == "" && r.Group == "" && len(r.Deny) == 0 && !r.Secret {
		return errors.New("rule checks nothing: set mode_max, owner, group, deny or secret")
	}
	return nil
}

func parseMode(s string) (uint32, error) {
	m, err := strconv.ParseUint(s, 8, 32)
	if err != nil || m > 0o7777 {
		return 0, fmt.Errorf("%q is not an octal mode (0000..7777)", s)
	}
	return uint32(m), nil
}

// ParseByteSize parses a size with the units of ParseByteRate: "1GiB",
// "512MiB", "0" (none). Empty gives 0.
func ParseByteSize(s string) (int64, error) {
	n, err := ParseByteRate(s)
	if err != nil {
		return 0, fmt.Errorf("%q is not a size like 1GiB", s)
	}
	return n, nil
}

// ParseByteRate parses a bytes-per-second figure: "0", "", "1048576",
// "512KiB", "50MiB", "1GiB" (also KB/MB/GB as powers of 1000).
func ParseByteRate(s string) (int64, error) {
	s = strings.TrimSpace(s)
	if s == "" || s == "0" {
		return 0, nil
	}
	units := []struct {
		suffix string
		mult   int64
	}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9}, {"B", 1}}
	mult := int64(1)
	for _, u := range units {
		if strings.HasSuffix(s, u.suffix) {
			s, mult = strings.TrimSpace(strings.TrimSuffix(s, u.suffix)), u.mult
			break
		}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < 0 || n > (1<<62)/mult {
		return 0, fmt.Errorf("%q is not a byte rate like 50MiB", s)
	}
	return n * mult, nil
}
