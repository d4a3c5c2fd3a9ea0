package audit

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/parryhq/parry/agent/api"
)

// Defaults for the zero values of Config.
const (
	DefaultMaxSize = 64 << 20 // bytes of the current segment before it rotates
	DefaultKeep    = 100      // old segments kept
)

// Limits of the knobs, so that a typo cannot rotate on every line or never.
const (
	minMaxSize = 1 << 20
	maxMaxSize = 4 << 30
	maxKeep    = 100_000
	minMaxAge  = time.Hour
)

// Config is the `audit:` section of parry.yaml: rotation and retention of
// the audit log. The zero value means the defaults: rotate at 64 MiB,
// compress old segments, keep the 100 newest of them, no age limit.
type Config struct {
	// MaxSize is the size at which the current segment (audit.log) is
	// closed and a new one started: bytes, or a number with KiB, MiB or
	// GiB ("64MiB"). A segment ends after the append that reaches it.
	// Default 64 MiB; 1 MiB..4 GiB.
	MaxSize Size `yaml:"max_size"`
	// Keep is how many old segments are kept (default 100); older ones
	// are removed, and each removal is recorded in the log. -1: no limit
	// by count.
	Keep int `yaml:"keep"`
	// MaxAge removes old segments closed longer ago than this (e.g. 90d);
	// each removal is recorded. 0 (default): no limit by age; at least 1h.
	MaxAge api.Duration `yaml:"max_age"`
	// Compress gzips old segments (default true).
	Compress *bool `yaml:"compress"`
}

// Validate reports the first invalid knob.
func (c Config) Validate() error {
	switch {
	case c.MaxSize != 0 && (c.MaxSize < minMaxSize || c.MaxSize > maxMaxSize):
		return fmt.Errorf("max_size: %s out of range 1MiB..4GiB", c.MaxSize)
	case c.Keep < -1 || c.Keep > maxKeep:
		return fmt.Errorf("keep: %d out of range -1..%d (-1: no limit by count)", c.Keep, maxKeep)
	case c.MaxAge != 0 && c.MaxAge.D() < minMaxAge:
		return fmt.Errorf("max_age: %v is less than 1h (0: no limit by age)", c.MaxAge)
	}
	return nil
}

// WithDefaults returns c with zero values replaced by the defaults.
func (c Config) WithDefaults() Config {
	if c.MaxSize == 0 {
		c.MaxSize = DefaultMaxSize
	}
	if c.Keep == 0 {
		c.Keep = DefaultKeep
	}
	if c.Compress == nil {
		t := true
		c.Compress = &t
	}
	return c
}

// compress reports whether old segments are gzipped.
func (c Config) compress() bool { return c.Compress == nil || *c.Compress }

// Size is a number of bytes, written in YAML as an integer or with a
// binary unit: 512KiB, 64MiB, 1GiB.
type Size int64

var sizeUnits = []struct {
	suffix string
	mul    int64
}{{"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}, {"B", 1}}

// ParseSize parses a size: digits, optionally followed by B, KiB, MiB or GiB.
func ParseSize(s string) (Size, error) {
	num, mul := strings.TrimSpace(s), int64(1)
	for _, u := range sizeUnits {
		if rest, ok := strings.CutSuffix(num, u.suffix); ok {
			num, mul = strings.TrimSpace(rest), u.mul
			break
		}
	}
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil || n < 0 || n > (1<<62)/mul {
		return 0, fmt.Errorf("bad size %q: want bytes or a number with KiB, MiB or GiB (64MiB)", s)
	}
	return Size(n * mul), nil
}

// UnmarshalText implements encoding.TextUnmarshaler.
func (s *Size) UnmarshalText(b []byte) error {
	v, err := ParseSize(string(b))
	if err != nil {
		return err
	}
	*s = v
	return nil
}

// UnmarshalYAML reads a size scalar, naming the line on error.
func (s *Size) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return fmt.Errorf("line %d: want a size like 64MiB", n.Line)
	}
	if err := s.UnmarshalText([]byte(n.Value)); err != nil {
		return fmt.Errorf("line %d: %w", n.Line, err)
	}
	return nil
}

// MarshalText implements encoding.TextMarshaler.
func (s Size) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// String renders the size with the largest unit that divides it.
func (s Size) String() string {
	for _, u := range sizeUnits {
		if s != 0 && int64(s)%u.mul == 0 {
			return strconv.FormatInt(int64(s)/u.mul, 10) + u.suffix
		}
	}
	return "0B"
}
