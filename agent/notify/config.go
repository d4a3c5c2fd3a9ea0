// Package notify delivers webhooks (generic JSON, or a Slack-compatible
// body) about decisions, lockdowns and integrity findings. Each webhook has
// its own bounded queue and worker: Notify never blocks (a full queue drops
// the event and counts it), delivery retries with exponential backoff, and a
// hung endpoint delays nothing but its own queue. URLs and headers carry
// secrets, so they never appear in logs or errors (see Redact).
package notify

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/parryhq/parry/agent/api"
)

// Defaults for the zero values of Config.
const (
	DefaultQueueSize   = 256
	DefaultRetries     = 5
	DefaultBackoff     = time.Second
	DefaultMaxBackoff  = time.Minute
	DefaultTimeout     = 10 * time.Second
	DefaultMinSeverity = "high"
)

// Event kinds.
const (
	KindDecision = "decision" // block, unblock (and notify/log actions)
	KindLockdown = "lockdown" // lockdown started or released
	KindFinding  = "finding"  // integrity or host-check finding
)

var allKinds = []string{KindDecision, KindLockdown, KindFinding}

var severities = []string{"info", "low", "medium", "high", "critical"}

// SeverityRank orders severities; unknown ones rank below info.
func SeverityRank(s string) int { return slices.Index(severities, strings.ToLower(s)) }

// Config is the `notify:` section of parry.yaml. No webhooks (the default)
// means notifications are off.
type Config struct {
	Webhooks []Webhook `yaml:"webhooks"`
	// Events lists the kinds sent: decision, lockdown, finding (default all).
	Events []string `yaml:"events"`
	// MinSeverity: findings below it are not sent (default high).
	MinSeverity string `yaml:"min_severity"`
	// QueueSize bounds each webhook's queue (default 256); beyond it events
	// are dropped and counted.
	QueueSize int `yaml:"queue_size"`
	// Retries after the first attempt (default 5; 0 means the default, -1 none).
	Retries int `yaml:"retries"`
	// Backoff before the first retry, doubling up to MaxBackoff (defaults 1s, 1m).
	Backoff    api.Duration `yaml:"backoff"`
	MaxBackoff api.Duration `yaml:"max_backoff"`
	// Timeout bounds one HTTP attempt (default 10s).
	Timeout api.Duration `yaml:"timeout"`
}

// Webhook is one endpoint.
type Webhook struct {
	Name    string            `yaml:"name"`    // for logs and metrics; default "webhook-N"
	URL     string            `yaml:"url"`     // http or https; may hold a secret (never logged)
	Format  string            `yaml:"format"`  // "json" (default) or "slack"
	Headers map[string]string `yaml:"headers"` // e.g. Authorization; values never logged
}

var errInvalid = errors.New("invalid")

// Validate reports the first invalid knob, without echoing URLs or header values.
func (c Config) Validate() error {
	names := map[string]bool{}
	for i, w := range c.Webhooks {
		name := w.name(i)
		if names[name] {
			return fmt.Errorf("%w: webhook name %q used twice", errInvalid, name)
		}
		names[name] = true
		u, err := url.Parse(w.URL)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return fmt.Errorf("%w: webhook %q: url must be http:// or https:// with a host", errInvalid, name)
		}
		if w.Format != "" && w.Format != "json" && w.Format != "slack" {
			return fmt.Errorf("%w: webhook %q: format %q (want json or slack)", errInvalid, name, w.Format)
		}
		for k, v := range w.Headers {
			if !validHeaderName(k) || strings.ContainsAny(v, "\r\n\x00") {
				return fmt.Errorf("%w: webhook %q: invalid header %q", errInvalid, name, k)
			}
			if http.CanonicalHeaderKey(k) == "Content-Type" || http.CanonicalHeaderKey(k) == "Host" {
				return fmt.Errorf("%w: webhook %q: header %q is set by parry", errInvalid, name, k)
			}
		}
	}
	for _, e := range c.Events {
		if !slices.Contains(allKinds, e) {
			return fmt.Errorf("%w: events: unknown kind %q (want decision, lockdown or finding)", errInvalid, e)
		}
	}
	switch {
	case c.MinSeverity != "" && SeverityRank(c.MinSeverity) < 0:
		return fmt.Errorf("%w: min_severity %q (want info, low, medium, high or critical)", errInvalid, c.MinSeverity)
	case c.QueueSize < 0 || c.QueueSize > 1<<20:
		return fmt.Errorf("%w: queue_size %d out of range 0..1048576", errInvalid, c.QueueSize)
	case c.Retries < -1 || c.Retries > 100:
		return fmt.Errorf("%w: retries %d out of range -1..100", errInvalid, c.Retries)
	case c.Backoff < 0 || c.MaxBackoff < 0 || c.Timeout < 0:
		return fmt.Errorf("%w: negative duration", errInvalid)
	case c.Timeout != 0 && c.Timeout.D() < 100*time.Millisecond:
		return fmt.Errorf("%w: timeout %v below 100ms (write a unit: 10s)", errInvalid, c.Timeout)
	}
	return nil
}

func (w Webhook) name(i int) string {
	if w.Name != "" {
		return w.Name
	}
	return fmt.Sprintf("webhook-%d", i+1)
}

// WithDefaults returns c with zero values replaced by the defaults.
func (c Config) WithDefaults() Config {
	if c.Events == nil {
		c.Events = allKinds
	}
	if c.MinSeverity == "" {
		c.MinSeverity = DefaultMinSeverity
	}
	if c.QueueSize == 0 {
		c.QueueSize = DefaultQueueSize
	}
	switch c.Retries {
	case 0:
		c.Retries = DefaultRetries
	case -1:
		c.Retries = 0
	}
	if c.Backoff == 0 {
		c.Backoff = api.Duration(DefaultBackoff)
	}
	if c.MaxBackoff == 0 {
		c.MaxBackoff = api.Duration(DefaultMaxBackoff)
	}
	if c.Timeout == 0 {
		c.Timeout = api.Duration(DefaultTimeout)
	}
	return c
}

// Redact returns the URL with only scheme and host (and port) kept: user
// info, path and query of webhook URLs routinely hold tokens.
func Redact(raw string) string {
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" {
		return "<redacted>"
	}
	out := u.Scheme + "://" + u.Host
	if u.Path != "" && u.Path != "/" || u.RawQuery != "" {
		out += "/<redacted>"
	}
	return out
}

// validHeaderName reports whether k is an RFC 7230 token.
func validHeaderName(k string) bool {
	if k == "" {
		return false
	}
	for _, r := range k {
		if r > 0x7e || r <= ' ' || strings.ContainsRune("\"(),/:;<=>?@[\\]{}", r) {
			return false
		}
	}
	return true
}
