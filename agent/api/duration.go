package api

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// ParseDuration parses Go duration syntax ("90s", "1h30m") extended with days
// ("7d") and weeks ("2w"), which may be combined with the others ("1w2d12h").
// Negative durations are refused.
func ParseDuration(s string) (time.Duration, error) {
	orig := s
	if s == "" {
		return 0, fmt.Errorf("parse duration: empty")
	}
	if strings.HasPrefix(s, "-") {
		return 0, fmt.Errorf("parse duration %q: negative", orig)
	}
	var total time.Duration
	// Peel off leading "<n>w" and "<n>d" components; the rest is Go syntax.
	for _, unit := range []struct {
		suffix byte
		d      time.Duration
	}{{'w', 7 * 24 * time.Hour}, {'d', 24 * time.Hour}} {
		i := 0
		for i < len(s) && s[i] >= '0' && s[i] <= '9' {
			i++
		}
		if i == 0 || i >= len(s) || s[i] != unit.suffix {
			continue
		}
		n, err := strconv.ParseInt(s[:i], 10, 64)
		if err != nil || n > int64((1<<63-1)/unit.d) {
			return 0, fmt.Errorf("parse duration %q: out of range", orig)
		}
		total += time.Duration(n) * unit.d
		s = s[i+1:]
	}
	if s != "" {
		d, err := time.ParseDuration(s)
		if err != nil {
			return 0, fmt.Errorf("parse duration %q: use Go syntax plus d and w, e.g. 90s, 12h, 7d, 2w", orig)
		}
		if d < 0 {
			return 0, fmt.Errorf("parse duration %q: negative", orig)
		}
		if total > 0 && d > (1<<63-1)-total {
			return 0, fmt.Errorf("parse duration %q: out of range", orig)
		}
		total += d
	}
	return total, nil
}

// FormatDuration renders d compactly with days ("7d", "1d12h", "90s").
func FormatDuration(d time.Duration) string {
	if d < 0 {
		d = 0
	}
	if d < 24*time.Hour {
		return d.Round(time.Second).String()
	}
	days := d / (24 * time.Hour)
	rest := (d - days*24*time.Hour).Round(time.Second)
	if rest == 0 {
		return fmt.Sprintf("%dd", days)
	}
	return fmt.Sprintf("%dd%s", days, rest.String())
}

// Duration is a time.Duration that reads and writes the extended syntax in
// YAML and JSON.
type Duration time.Duration

// UnmarshalText implements encoding.TextUnmarshaler (YAML and JSON strings).
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := ParseDuration(string(b))
	if err != nil {
		return err
	}
	*d = Duration(v)
	return nil
}

// UnmarshalYAML reads a duration scalar, naming the line on error.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return fmt.Errorf("line %d: want a duration like 90s, 12h, 7d, 2w", n.Line)
	}
	if err := d.UnmarshalText([]byte(n.Value)); err != nil {
		return fmt.Errorf("line %d: %w", n.Line, err)
	}
	return nil
}

// MarshalText implements encoding.TextMarshaler.
func (d Duration) MarshalText() ([]byte, error) { return []byte(FormatDuration(time.Duration(d))), nil }

// String prints the value as time.Duration does ("168h0m0s"), so that
// messages built from config values read as they did before the type
// existed; MarshalText writes the config syntax ("7d").
func (d Duration) String() string { return time.Duration(d).String() }

// D returns the value as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }
