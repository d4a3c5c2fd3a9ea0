package feed

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/url"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/parryhq/parry/agent/api"
	"go.yaml.in/yaml/v3"
)

// Config is one entry of the `feeds:` list in parry.yaml. The daemon's
// Config embeds a []Config; strict decoding (unknown keys are an error)
// comes from its decoder, and DecodeConfigs does the same on its own.
type Config struct {
	Name string `yaml:"name"` // blocks are marked feed:NAME
	URL  string `yaml:"url"`  // http:// or https://; exactly one of url and path
	Path string `yaml:"path"` // an absolute path to a regular file

	Format  string       `yaml:"format"`  // "lines" (the default): one address or CIDR per line
	Refresh api.Duration `yaml:"refresh"` // time between two refreshes
	For     api.Duration `yaml:"for"`     // expiry given to each entry at every refresh (renewed while listed)
	Action  string       `yaml:"action"`  // "drop" (the default) or "reject"

	MinPrefixV4 int `yaml:"min_prefix_v4"` // broadest IPv4 prefix accepted from this feed
	MinPrefixV6 int `yaml:"min_prefix_v6"` // broadest IPv6 prefix accepted from this feed

	MaxSize    Size         `yaml:"max_size"`    // a body or file larger than this is refused
	MaxEntries int          `yaml:"max_entries"` // a feed listing more entries than this is refused
	Timeout    api.Duration `yaml:"timeout"`     // bound on one fetch, connect to last byte
	MaxStale   api.Duration `yaml:"max_stale"`   // a failing feed's last good entries are renewed this long after its last success
}

// Defaults and bounds of the knobs.
const (
	DefaultRefresh    = 6 * time.Hour
	MinRefresh        = time.Minute
	DefaultTimeout    = 60 * time.Second
	MaxTimeout        = 10 * time.Minute
	DefaultMaxSize    = Size(16 << 20)
	MaxMaxSize        = Size(256 << 20)
	DefaultMaxEntries = 1_000_000
	MaxMaxEntries     = 10_000_000
	DefaultMaxStale   = 7 * 24 * time.Hour
	DefaultMinV4      = 16 // as the daemon's own min_prefix_v4
	DefaultMinV6      = 32 // as the daemon's own min_prefix_v6
	// MaxRedirects is the most redirects one fetch follows.
	MaxRedirects = 5
)

var nameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9_.-]{0,31}$`)

// WithDefaults returns c with every unset knob at its default.
func (c Config) WithDefaults() Config {
	if c.Format == "" {
		c.Format = "lines"
	}
	if c.Action == "" {
		c.Action = "drop"
	}
	if c.Refresh == 0 {
		c.Refresh = api.Duration(DefaultRefresh)
	}
	if c.For == 0 {
		// Two refreshes may fail before the kernel lets the entries go
		// on its own (the daemon renews them while it runs).
		c.For = api.Duration(3 * c.Refresh.D())
	}
	if c.MinPrefixV4 == 0 {
		c.MinPrefixV4 = DefaultMinV4
	}
	if c.MinPrefixV6 == 0 {
		c.MinPrefixV6 = DefaultMinV6
	}
	if c.MaxSize == 0 {
		c.MaxSize = DefaultMaxSize
	}
	if c.MaxEntries == 0 {
		c.MaxEntries = DefaultMaxEntries
	}
	if c.Timeout == 0 {
		c.Timeout = api.Duration(DefaultTimeout)
	}
	if c.MaxStale == 0 {
		c.MaxStale = api.Duration(DefaultMaxStale)
	}
	return c
}

// Validate checks a Config that has been through WithDefaults.
func (c Config) Validate() error {
	var errs []error
	bad := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("feed %q: "+format, append([]any{c.Name}, args...)...))
	}
	if !nameRE.MatchString(c.Name) {
		bad("name must be 1-32 of a-z 0-9 _ . - starting with a letter or digit")
	}
	switch {
	case (c.URL == "") == (c.Path == ""):
		bad("give exactly one of url and path")
	case c.URL != "":
		u, err := url.Parse(c.URL)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			bad("url: want an absolute http:// or https:// URL")
		} else if u.User != nil {
			bad("url: credentials in the URL are not supported")
		}
	case !filepath.IsAbs(c.Path):
		bad("path: %q must be absolute", c.Path)
	}
	if c.Format != "lines" {
		bad("format: %q is unknown (want lines)", c.Format)
	}
	if c.Action != "drop" && c.Action != "reject" {
		bad("action: %q is unknown (want drop or reject)", c.Action)
	}
	if c.Refresh.D() < MinRefresh {
		bad("refresh: must be at least %s", MinRefresh)
	}
	if c.For.D() < c.Refresh.D() {
		bad("for: %s is shorter than refresh %s: entries would lapse between refreshes", c.For.D(), c.Refresh.D())
	}
	if c.MinPrefixV4 < 1 || c.MinPrefixV4 > 32 {
		bad("min_prefix_v4: %d is outside 1..32", c.MinPrefixV4)
	}
	if c.MinPrefixV6 < 1 || c.MinPrefixV6 > 128 {
		bad("min_prefix_v6: %d is outside 1..128", c.MinPrefixV6)
	}
	if c.MaxSize < 1 || c.MaxSize > MaxMaxSize {
		bad("max_size: must be within 1..%s", MaxMaxSize)
	}
	if c.MaxEntries < 1 || c.MaxEntries > MaxMaxEntries {
		bad("max_entries: must be within 1..%d", MaxMaxEntries)
	}
	if c.Timeout.D() < time.Second || c.Timeout.D() > MaxTimeout {
		bad("timeout: must be within 1s..%s", MaxTimeout)
	}
	if c.MaxStale.D() < c.Refresh.D() {
		bad("max_stale: must be at least refresh")
	}
	return errors.Join(errs...)
}

// ValidateAll applies defaults to every feed, validates it and checks that
// names are unique. It returns the completed configs.
func ValidateAll(cs []Config) ([]Config, error) {
	out := make([]Config, len(cs))
	seen := make(map[string]bool, len(cs))
	var errs []error
	for i, c := range cs {
		c = c.WithDefaults()
		if err := c.Validate(); err != nil {
			errs = append(errs, err)
		}
		if seen[c.Name] {
			errs = append(errs, fmt.Errorf("feed %q: name used twice", c.Name))
		}
		seen[c.Name] = true
		out[i] = c
	}
	return out, errors.Join(errs...)
}

// DecodeConfigs reads a YAML list of feeds strictly (unknown keys are an
// error), applies defaults and validates them.
func DecodeConfigs(b []byte) ([]Config, error) {
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	var cs []Config
	if err := dec.Decode(&cs); err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("feeds: %w", err)
	}
	return ValidateAll(cs)
}

// Size is a byte count written as a plain number or with a binary suffix
// ("512KiB", "16MiB", "1GiB").
type Size int64

var sizeUnits = []struct {
	suffix string
	mult   int64
}{{"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}, {"B", 1}, {"", 1}}

// ParseSize parses a Size.
func ParseSize(s string) (Size, error) {
	for _, u := range sizeUnits {
		num, ok := strings.CutSuffix(s, u.suffix)
		if !ok {
			continue
		}
		n, err := strconv.ParseInt(num, 10, 64)
		if err != nil || n < 0 || n > (1<<62)/u.mult {
			break
		}
		return Size(n * u.mult), nil
	}
	return 0, fmt.Errorf("parse size %q: want bytes or a number with KiB, MiB or GiB", s)
}

// UnmarshalText implements encoding.TextUnmarshaler.
func (z *Size) UnmarshalText(b []byte) error {
	v, err := ParseSize(string(b))
	if err != nil {
		return err
	}
	*z = v
	return nil
}

// MarshalText implements encoding.TextMarshaler.
func (z Size) MarshalText() ([]byte, error) { return []byte(z.String()), nil }

// String renders the size with the largest exact binary suffix.
func (z Size) String() string {
	for _, u := range sizeUnits[:3] {
		if z != 0 && int64(z)%u.mult == 0 {
			return strconv.FormatInt(int64(z)/u.mult, 10) + u.suffix
		}
	}
	return strconv.FormatInt(int64(z), 10)
}
