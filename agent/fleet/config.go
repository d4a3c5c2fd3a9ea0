package fleet

import (
	"errors"
	"fmt"
	"net/url"
	"regexp"
	"time"

	"github.com/nats-io/nkeys"

	"github.com/parryhq/parry/agent/api"
)

// Config is the `fleet:` section of parry.yaml. The zero value (no servers)
// means the fleet is off and parry works alone.
type Config struct {
	// Servers are the NATS URLs to connect to (nats://, tls://, ws://, wss://).
	// Empty: fleet off.
	Servers []string `yaml:"servers" json:"servers,omitempty"`
	// Name is this host in the fleet, stamped as origin on every decision it
	// publishes. Default: the hostname.
	Name string `yaml:"name" json:"name,omitempty"`
	// Credentials is a NATS .creds file (user JWT and nkey seed) or a file
	// holding a user nkey seed (SU...). The same key signs this host's
	// decisions. Optional.
	Credentials string `yaml:"credentials" json:"credentials,omitempty"`
	// TLS configures a TLS connection to the servers. Optional.
	TLS TLSConfig `yaml:"tls" json:"tls,omitzero"`
	// SubjectPrefix is the first subject token(s) of fleet messages. Default "parry".
	SubjectPrefix string `yaml:"subject_prefix" json:"subject_prefix,omitempty"`
	// Stream is the JetStream stream that holds the current decisions.
	// Default: the prefix in upper case with "_DECISIONS" ("PARRY_DECISIONS").
	Stream string `yaml:"stream" json:"stream,omitempty"`
	// Replicas of the stream when this agent creates it. Default 1.
	Replicas int `yaml:"replicas" json:"replicas,omitempty"`
	// QueueSize bounds the outgoing queue (per target) while NATS is
	// unreachable; when full the oldest entry is dropped. Default 10000.
	QueueSize int `yaml:"queue_size" json:"queue_size,omitempty"`
	// Trusted maps fleet host names to their public user nkeys (U...). When
	// set, a remote decision is applied only if its origin is listed and it is
	// signed by that origin's key. Empty: every decision that reaches the
	// stream is trusted (the NATS server's authorisation is the only gate).
	Trusted map[string]string `yaml:"trusted" json:"trusted,omitempty"`
	// CatchupTimeout bounds how long start-up waits to catch up on the
	// fleet's active decisions before the agent reports ready anyway
	// (catch-up then continues in the background). Default 10s.
	CatchupTimeout api.Duration `yaml:"catchup_timeout" json:"catchup_timeout,omitempty"`
	// UnblockTTL is how long an unblock stays in the stream so that agents
	// that were away still learn of it, when the block it lifts had no known
	// expiry. Default 168h (7 days).
	UnblockTTL api.Duration `yaml:"unblock_ttl" json:"unblock_ttl,omitempty"`
}

// TLSConfig is the TLS client configuration for the NATS connection.
type TLSConfig struct {
	CA   string `yaml:"ca" json:"ca,omitempty"`     // PEM CA bundle to verify the servers
	Cert string `yaml:"cert" json:"cert,omitempty"` // client certificate (PEM), with Key
	Key  string `yaml:"key" json:"key,omitempty"`   // client key (PEM), with Cert
}

// Defaults.
const (
	DefaultSubjectPrefix  = "parry"
	DefaultQueueSize      = 10000
	DefaultCatchupTimeout = 10 * time.Second
	DefaultUnblockTTL     = 7 * 24 * time.Hour
	maxQueueSize          = 1_000_000
)

var (
	nameRE   = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)
	tokenRE  = regexp.MustCompile(`^[A-Za-z0-9_-]{1,32}(\.[A-Za-z0-9_-]{1,32}){0,3}$`)
	streamRE = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)
)

// Enabled reports whether the fleet is configured.
func (c Config) Enabled() bool { return len(c.Servers) > 0 }

// WithDefaults returns c with every empty field set to its default; hostname
// supplies the default Name.
func (c Config) WithDefaults(hostname string) Config {
	if c.Name == "" {
		c.Name = hostname
	}
	if c.SubjectPrefix == "" {
		c.SubjectPrefix = DefaultSubjectPrefix
	}
	if c.Stream == "" {
		c.Stream = defaultStream(c.SubjectPrefix)
	}
	if c.Replicas == 0 {
		c.Replicas = 1
	}
	if c.QueueSize == 0 {
		c.QueueSize = DefaultQueueSize
	}
	if c.CatchupTimeout == 0 {
		c.CatchupTimeout = api.Duration(DefaultCatchupTimeout)
	}
	if c.UnblockTTL == 0 {
		c.UnblockTTL = api.Duration(DefaultUnblockTTL)
	}
	return c
}

func defaultStream(prefix string) string {
	b := []byte(prefix)
	for i, ch := range b {
		switch {
		case ch >= 'a' && ch <= 'z':
			b[i] = ch - 'a' + 'A'
		case ch == '.':
			b[i] = '_'
		}
	}
	return string(b) + "_DECISIONS"
}

// Validate checks a configuration (defaults need not be applied). A disabled
// fleet is valid whatever else it holds.
func (c Config) Validate() error {
	if !c.Enabled() {
		return nil
	}
	var errs []error
	for _, s := range c.Servers {
		u, err := url.Parse(s)
		switch {
		case err != nil:
			errs = append(errs, fmt.Errorf("servers: %q: %w", s, err))
		case u.Scheme != "nats" && u.Scheme != "tls" && u.Scheme != "ws" && u.Scheme != "wss":
			errs = append(errs, fmt.Errorf("servers: %q: scheme must be nats://, tls://, ws:// or wss://", s))
		case u.Host == "":
			errs = append(errs, fmt.Errorf("servers: %q: no host", s))
		}
	}
	if c.Name != "" && !nameRE.MatchString(c.Name) {
		errs = append(errs, fmt.Errorf("name: %q: use 1-64 letters, digits, '.', '_' or '-'", c.Name))
	}
	if c.SubjectPrefix != "" && !tokenRE.MatchString(c.SubjectPrefix) {
		errs = append(errs, fmt.Errorf("subject_prefix: %q: use up to 4 dot-separated tokens of letters, digits, '_' or '-'", c.SubjectPrefix))
	}
	if c.Stream != "" && !streamRE.MatchString(c.Stream) {
		errs = append(errs, fmt.Errorf("stream: %q: use 1-64 letters, digits, '_' or '-'", c.Stream))
	}
	if c.Replicas < 0 || c.Replicas > 5 {
		errs = append(errs, fmt.Errorf("replicas: %d: must be 1 to 5", c.Replicas))
	}
	if c.QueueSize < 0 || c.QueueSize > maxQueueSize {
		errs = append(errs, fmt.Errorf("queue_size: %d: must be 1 to %d", c.QueueSize, maxQueueSize))
	}
	if c.CatchupTimeout < 0 || c.UnblockTTL < 0 {
		errs = append(errs, errors.New("catchup_timeout and unblock_ttl must not be negative"))
	}
	if c.UnblockTTL != 0 && c.UnblockTTL.D() < time.Second {
		errs = append(errs, fmt.Errorf("unblock_ttl: %v: must be at least 1s", c.UnblockTTL))
	}
	if (c.TLS.Cert == "") != (c.TLS.Key == "") {
		errs = append(errs, errors.New("tls: cert and key go together"))
	}
	for name, key := range c.Trusted {
		if !nameRE.MatchString(name) {
			errs = append(errs, fmt.Errorf("trusted: host name %q: use 1-64 letters, digits, '.', '_' or '-'", name))
		}
		if !nkeys.IsValidPublicUserKey(key) {
			errs = append(errs, fmt.Errorf("trusted[%s]: %q is not a public user nkey (U...)", name, key))
		}
	}
	return errors.Join(errs...)
}
