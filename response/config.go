package response

import (
	"cmp"
	"errors"
	"fmt"
	"math"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/parryhq/parry/agent/api"
)

// Config is the `response:` section of parry.yaml. The zero value means the
// built-in default policy; every zero field means its documented default
// (docs/policy.md). The agent decodes it with KnownFields(true), so every key
// is declared here.
type Config struct {
	// DryRun runs the whole policy but marks every decision DryRun: it is
	// recorded as what would have happened and never enforced.
	DryRun bool `yaml:"dry_run"`
	// BuiltinRules selects whether the built-in default rules apply (default
	// true). A configured rule with the same name as a built-in one replaces it.
	BuiltinRules *bool `yaml:"builtin_rules"`
	// Rules are evaluated in order after the built-ins they don't replace.
	Rules      []Rule       `yaml:"rules"`
	Escalation Escalation   `yaml:"escalation"`
	Senders    []SenderRule `yaml:"senders"`
	Limits     Limits       `yaml:"limits"`
	// SenderBlockCap bounds the blocks that non-admin senders' signals can
	// make, all such senders together: a compromised sender can get any
	// unprotected address blocked, and this bounds how many.
	SenderBlockCap BlockCap `yaml:"sender_block_cap"`
	// PrefixV4 and PrefixV6 are what a rule keyed on the address counts and
	// blocks per, by family, unless the rule says otherwise: 32 (each IPv4
	// address) and 64 (an IPv6 /64, which one host can hop around in).
	PrefixV4 int `yaml:"prefix_v4"`
	PrefixV6 int `yaml:"prefix_v6"`
}

// BlockCap is at most Max blocks per Per. The agent enforces it (it knows
// which sender is an admin and which blocks a decision really made).
type BlockCap struct {
	Max int          `yaml:"max"` // blocks per interval; default 100
	Per api.Duration `yaml:"per"` // the interval; default 1m
}

// Rule turns N signals of a kind per key within a window into an action.
type Rule struct {
	Name string `yaml:"name"` // unique; appears in every decision it makes
	Kind string `yaml:"kind"` // signal kind it counts; "*" counts every kind
	// MinSeverity restricts the rule to signals at least this severe
	// (low < medium < high < critical; a signal without one counts as medium).
	MinSeverity string `yaml:"min_severity"`
	// Key is what signals are counted per: "ip" (default), "user", "ip+user",
	// or "none" (all signals of the kind together). Signals lacking a part of
	// the key are not counted by this rule. "ip/N" (and "ip/N+user") is "ip"
	// counted per prefix: N of 33..128 sets PrefixV6, N of 8..32 PrefixV4.
	Key string `yaml:"key"`
	// PrefixV4 and PrefixV6 are the prefix lengths an address key counts
	// and blocks per (0: the response section's prefix_v4 / prefix_v6).
	PrefixV4  int          `yaml:"prefix_v4"`
	PrefixV6  int          `yaml:"prefix_v6"`
	Threshold int          `yaml:"threshold"` // signals needed within Window; default 1
	Window    api.Duration `yaml:"window"`    // default 1m; ignored when Threshold is 1
	Action    Action       `yaml:"action"`    // block, lockdown, notify or log
	Duration  api.Duration `yaml:"duration"`  // block and lockdown: how long (required)
	// Allow is the extra allowlist of a lockdown; Isolate drops outbound too.
	Allow   []netip.Prefix `yaml:"allow"`
	Isolate bool           `yaml:"isolate"`
	// Escalate lengthens blocks for repeat offenders (default true for block).
	Escalate *bool `yaml:"escalate"`
	// DryRun marks this rule's decisions as not enforced, to try a rule out.
	DryRun bool `yaml:"dry_run"`
}

// Escalation lengthens the blocks of repeat offenders: the n-th block of the
// same address within Remember of the previous one lasts
// Duration * Factor^(n-1), capped at Max.
type Escalation struct {
	Factor   float64      `yaml:"factor"`   // default 2; 1 disables escalation
	Max      api.Duration `yaml:"max"`      // default 168h (one week)
	Remember api.Duration `yaml:"remember"` // default 720h (30 days) after an offender's last block
}

// SenderRule lets a local user or the members of a group send signals of the
// listed kinds ("*": any kind). Root and the admin group are decided by the
// agent and need no entry.
type SenderRule struct {
	User  string   `yaml:"user"`
	Group string   `yaml:"group"`
	Kinds []string `yaml:"kinds"`
}

// Limits bound the policy's memory and the rate at which any one sender can
// feed it.
type Limits struct {
	MaxKeys      int     `yaml:"max_keys"`      // counting state entries across all rules; default 100000
	MaxOffenders int     `yaml:"max_offenders"` // escalation memory entries; default 100000
	CauseSignals int     `yaml:"cause_signals"` // signals kept per decision as its cause; default 10
	SenderRate   float64 `yaml:"sender_rate"`   // signals per second per sender uid; default 1000
	SenderBurst  int     `yaml:"sender_burst"`  // bucket size; default 2000
	MaxSenders   int     `yaml:"max_senders"`   // rate-limit buckets kept; default 4096
}

// Built-in defaults (documented in docs/policy.md).
const (
	DefaultMaxKeys      = 100_000
	DefaultMaxOffenders = 100_000
	DefaultCauseSignals = 10
	DefaultSenderRate   = 1000
	DefaultSenderBurst  = 2000
	DefaultMaxSenders   = 4096
	DefaultFactor       = 2
	DefaultMaxBlock     = 7 * 24 * time.Hour
	DefaultRemember     = 30 * 24 * time.Hour
	DefaultWindow       = time.Minute
	DefaultBlockCapMax  = 100
	DefaultBlockCapPer  = time.Minute
	DefaultPrefixV4     = 32
	DefaultPrefixV6     = 64
	MinPolicyPrefixV4   = 8  // broadest prefix a rule may count per
	MinPolicyPrefixV6   = 32 //

	maxThreshold = 10_000 // state per key grows with min(threshold, cause_signals)
	maxLimit     = 100_000_000
)

// Key kinds of a rule.
const (
	KeyIP     = "ip"
	KeyUser   = "user"
	KeyIPUser = "ip+user"
	KeyNone   = "none"
)

// severity ranks; "" counts as medium.
var severities = map[string]int{"low": 1, "medium": 2, "": 2, "high": 3, "critical": 4}

// minSeverity ranks a rule's min_severity; "" means no minimum.
func minSeverity(s string) int {
	if s == "" {
		return 0
	}
	return severities[s]
}

// DefaultRules is the built-in policy. It never locks the host down: a
// lockdown happens only when a configured rule or an operator asks for one.
func DefaultRules() []Rule {
	return []Rule{
		{Name: "auth-failure", Kind: "auth_failure", Key: KeyIP, Threshold: 5, Window: api.Duration(15 * time.Minute),
			Action: ActionBlock, Duration: api.Duration(time.Hour)},
		{Name: "auth-failure-user", Kind: "auth_failure", Key: KeyUser, Threshold: 20, Window: api.Duration(15 * time.Minute),
			Action: ActionNotify},
		// Connection-level events of the log detectors (sshd: invalid user,
		// too many attempts, pre-auth disconnects, banner and kex probes).
		// A failed password login logs one too, so this counts
		// connections, not attempts, and fires well after auth-failure
		// for a password guesser; it catches scanners that never send a
		// password (docs/policy.md).
		{Name: "probe", Kind: "probe", Key: KeyIP, Threshold: 10, Window: api.Duration(10 * time.Minute),
			Action: ActionBlock, Duration: api.Duration(time.Hour)},
		{Name: "rate-exceeded", Kind: "rate_exceeded", Key: KeyIP, Threshold: 10, Window: api.Duration(time.Minute),
			Action: ActionBlock, Duration: api.Duration(10 * time.Minute)},
		{Name: "scan-detected", Kind: "scan_detected", Key: KeyIP, Threshold: 1,
			Action: ActionBlock, Duration: api.Duration(time.Hour)},
		{Name: "ban-requested", Kind: "ban_requested", Key: KeyIP, Threshold: 1,
			Action: ActionBlock, Duration: api.Duration(time.Hour)},
		{Name: "data-breach-attempt", Kind: "data_breach_attempt", Key: KeyIP, Threshold: 1,
			Action: ActionBlock, Duration: api.Duration(24 * time.Hour)},
		{Name: "malware-detected", Kind: "malware_detected", Key: KeyNone, Threshold: 1,
			Action: ActionNotify},
		{Name: "integrity-violation", Kind: "integrity_violation", Key: KeyNone, Threshold: 1,
			Action: ActionNotify},
	}
}

// Errors callers branch on.
var (
	ErrInvalidConfig = errors.New("invalid response config")
	ErrUnauthorized  = errors.New("sender not allowed to send this kind")
	ErrRateLimited   = errors.New("sender rate limit exceeded")
	ErrInvalidSignal = errors.New("invalid signal")
)

// ConfigError says which setting is wrong.
type ConfigError struct {
	Field string // "rules[2].duration"
	Msg   string
}

func (e *ConfigError) Error() string { return fmt.Sprintf("response config: %s: %s", e.Field, e.Msg) }

// Unwrap lets errors.Is(err, ErrInvalidConfig) match.
func (e *ConfigError) Unwrap() error { return ErrInvalidConfig }

func cfgErr(field, format string, args ...any) error {
	return &ConfigError{Field: field, Msg: fmt.Sprintf(format, args...)}
}

// Validate checks every setting and says which one is wrong.
func (c Config) Validate() error {
	names := map[string]bool{}
	for i, r := range c.Rules {
		field := fmt.Sprintf("rules[%d]", i)
		if err := r.validate(field); err != nil {
			return err
		}
		if names[r.Name] {
			return cfgErr(field+".name", "duplicate rule name %q", r.Name)
		}
		names[r.Name] = true
	}
	if err := c.Escalation.validate(); err != nil {
		return err
	}
	for i, s := range c.Senders {
		field := fmt.Sprintf("senders[%d]", i)
		if (s.User == "") == (s.Group == "") {
			return cfgErr(field, "give exactly one of user or group")
		}
		if len(s.Kinds) == 0 {
			return cfgErr(field+".kinds", "empty: list the kinds this sender may send, or \"*\"")
		}
		for _, k := range s.Kinds {
			if k == "" {
				return cfgErr(field+".kinds", "empty kind")
			}
		}
	}
	if err := c.Limits.validate(); err != nil {
		return err
	}
	if err := validPrefixes("", c.PrefixV4, c.PrefixV6); err != nil {
		return err
	}
	return c.SenderBlockCap.validate()
}

func (b BlockCap) validate() error {
	if b.Max < 0 || b.Max > maxLimit {
		return cfgErr("sender_block_cap.max", "%d is outside 0..%d (0 means the default)", b.Max, maxLimit)
	}
	if b.Per < 0 || (b.Per > 0 && b.Per.D() < time.Second) || b.Per.D() > 24*time.Hour {
		return cfgErr("sender_block_cap.per", "%s is outside 1s..24h (0 means the default)", b.Per)
	}
	return nil
}

func (r Rule) validate(field string) error {
	if r.Name == "" {
		return cfgErr(field+".name", "missing")
	}
	field = fmt.Sprintf("%s (%s)", field, r.Name)
	if r.Kind == "" {
		return cfgErr(field+".kind", "missing (use \"*\" for every kind)")
	}
	if _, ok := severities[r.MinSeverity]; !ok {
		return cfgErr(field+".min_severity", "%q is not one of low, medium, high, critical", r.MinSeverity)
	}
	key, v4, v6, ok := splitKey(r.Key)
	if !ok {
		return cfgErr(field+".key", "%q is not one of ip, ip/N, user, ip+user, ip/N+user, none", r.Key)
	}
	if (v4 != 0 && r.PrefixV4 != 0) || (v6 != 0 && r.PrefixV6 != 0) {
		return cfgErr(field+".key", "%q and prefix_v4/prefix_v6 both set the prefix", r.Key)
	}
	if err := validPrefixes(field+".", max(v4, r.PrefixV4), max(v6, r.PrefixV6)); err != nil {
		return err
	}
	if (r.PrefixV4 != 0 || r.PrefixV6 != 0) && key != KeyIP && key != KeyIPUser {
		return cfgErr(field+".prefix_v4", "only a rule keyed on the address counts per prefix")
	}
	if r.Threshold < 0 || r.Threshold > maxThreshold {
		return cfgErr(field+".threshold", "%d is outside 1..%d", r.Threshold, maxThreshold)
	}
	if r.Window < 0 {
		return cfgErr(field+".window", "negative")
	}
	switch r.Action {
	case ActionBlock:
		if k := r.key(); k != KeyIP && k != KeyIPUser {
			return cfgErr(field+".key", "a block needs an address: key must be ip or ip+user, not %q", k)
		}
		if r.Duration <= 0 {
			return cfgErr(field+".duration", "a block needs a positive duration")
		}
	case ActionLockdown:
		if r.Duration <= 0 {
			return cfgErr(field+".duration", "a lockdown needs a positive duration: it always ends")
		}
	case ActionNotify, ActionLog:
	case "":
		return cfgErr(field+".action", "missing (block, lockdown, notify or log)")
	default:
		return cfgErr(field+".action", "%q is not one of block, lockdown, notify, log", r.Action)
	}
	for j, p := range r.Allow {
		if !p.IsValid() {
			return cfgErr(fmt.Sprintf("%s.allow[%d]", field, j), "invalid prefix")
		}
	}
	if len(r.Allow) > 0 && r.Action != ActionLockdown {
		return cfgErr(field+".allow", "only a lockdown has an allowlist")
	}
	if r.Isolate && r.Action != ActionLockdown {
		return cfgErr(field+".isolate", "only a lockdown isolates")
	}
	return nil
}

func (e Escalation) validate() error {
	if e.Factor != 0 && (e.Factor < 1 || e.Factor > 100 || math.IsNaN(e.Factor)) {
		return cfgErr("escalation.factor", "%v is outside 1..100", e.Factor)
	}
	if e.Max < 0 {
		return cfgErr("escalation.max", "negative")
	}
	if e.Remember < 0 {
		return cfgErr("escalation.remember", "negative")
	}
	return nil
}

func (l Limits) validate() error {
	for _, f := range []struct {
		name string
		v    int
	}{
		{"limits.max_keys", l.MaxKeys}, {"limits.max_offenders", l.MaxOffenders},
		{"limits.cause_signals", l.CauseSignals}, {"limits.sender_burst", l.SenderBurst},
		{"limits.max_senders", l.MaxSenders},
	} {
		if f.v < 0 || f.v > maxLimit {
			return cfgErr(f.name, "%d is outside 0..%d (0 means the default)", f.v, maxLimit)
		}
	}
	if l.SenderRate < 0 || math.IsNaN(l.SenderRate) || math.IsInf(l.SenderRate, 0) {
		return cfgErr("limits.sender_rate", "must be a positive number of signals per second")
	}
	return nil
}

// key returns the rule's key kind with its default, without a prefix.
func (r Rule) key() string {
	k, _, _, _ := splitKey(r.Key)
	return k
}

// splitKey parses a rule's key: "ip/64" is KeyIP with an IPv6 prefix of
// 64, "ip/24+user" KeyIPUser with an IPv4 prefix of 24. ok false: not a
// key.
func splitKey(s string) (key string, v4, v6 int, ok bool) {
	switch s {
	case "":
		return KeyIP, 0, 0, true
	case KeyIP, KeyUser, KeyIPUser, KeyNone:
		return s, 0, 0, true
	}
	rest, found := strings.CutPrefix(s, "ip/")
	if !found {
		return "", 0, 0, false
	}
	key = KeyIP
	if r, ok := strings.CutSuffix(rest, "+user"); ok {
		key, rest = KeyIPUser, r
	}
	n, err := strconv.Atoi(rest)
	if err != nil || len(rest) > 3 || (len(rest) > 1 && rest[0] == '0') {
		return "", 0, 0, false
	}
	switch {
	case n >= MinPolicyPrefixV4 && n <= 32:
		return key, n, 0, true
	case n > 32 && n <= 128:
		return key, 0, n, true
	}
	return "", 0, 0, false
}

// validPrefixes checks prefix lengths of the two families (0: default).
func validPrefixes(field string, v4, v6 int) error {
	if v4 != 0 && (v4 < MinPolicyPrefixV4 || v4 > 32) {
		return cfgErr(field+"prefix_v4", "%d is outside %d..32", v4, MinPolicyPrefixV4)
	}
	if v6 != 0 && (v6 < MinPolicyPrefixV6 || v6 > 128) {
		return cfgErr(field+"prefix_v6", "%d is outside %d..128", v6, MinPolicyPrefixV6)
	}
	return nil
}

// bits is the prefix length the rule counts and blocks an address per.
func (r *Rule) bits(a netip.Addr) int {
	if a.Is4() {
		return r.PrefixV4
	}
	return r.PrefixV6
}

// withDefaults returns the rule with every zero field set to its default
// (v4 and v6: the section's prefixes).
func (r Rule) withDefaults(v4, v6 int) Rule {
	key, kv4, kv6, _ := splitKey(r.Key)
	r.Key = key
	r.PrefixV4 = cmp.Or(r.PrefixV4, kv4, v4, DefaultPrefixV4)
	r.PrefixV6 = cmp.Or(r.PrefixV6, kv6, v6, DefaultPrefixV6)
	if r.Threshold == 0 {
		r.Threshold = 1
	}
	if r.Window == 0 {
		r.Window = api.Duration(DefaultWindow)
	}
	if r.Escalate == nil {
		esc := r.Action == ActionBlock
		r.Escalate = &esc
	}
	return r
}

// EffectiveRules returns the rules in force: the built-ins (unless disabled),
// with configured rules of the same name replacing them, then the other
// configured rules, all with defaults filled in.
func (c Config) EffectiveRules() []Rule {
	byName := map[string]int{}
	var out []Rule
	if c.BuiltinRules == nil || *c.BuiltinRules {
		for _, r := range DefaultRules() {
			byName[r.Name] = len(out)
			out = append(out, r)
		}
	}
	for _, r := range c.Rules {
		if i, ok := byName[r.Name]; ok {
			out[i] = r
			continue
		}
		out = append(out, r)
	}
	for i := range out {
		out[i] = out[i].withDefaults(c.PrefixV4, c.PrefixV6)
	}
	return out
}

// withDefaults fills the zero fields of escalation and limits.
func (c Config) withDefaults() Config {
	if c.Escalation.Factor == 0 {
		c.Escalation.Factor = DefaultFactor
	}
	if c.Escalation.Max == 0 {
		c.Escalation.Max = api.Duration(DefaultMaxBlock)
	}
	if c.Escalation.Remember == 0 {
		c.Escalation.Remember = api.Duration(DefaultRemember)
	}
	l := &c.Limits
	l.MaxKeys = orDefault(l.MaxKeys, DefaultMaxKeys)
	l.MaxOffenders = orDefault(l.MaxOffenders, DefaultMaxOffenders)
	l.CauseSignals = orDefault(l.CauseSignals, DefaultCauseSignals)
	l.SenderBurst = orDefault(l.SenderBurst, DefaultSenderBurst)
	l.MaxSenders = orDefault(l.MaxSenders, DefaultMaxSenders)
	if l.SenderRate == 0 {
		l.SenderRate = DefaultSenderRate
	}
	c.PrefixV4 = orDefault(c.PrefixV4, DefaultPrefixV4)
	c.PrefixV6 = orDefault(c.PrefixV6, DefaultPrefixV6)
	c.SenderBlockCap.Max = orDefault(c.SenderBlockCap.Max, DefaultBlockCapMax)
	if c.SenderBlockCap.Per == 0 {
		c.SenderBlockCap.Per = api.Duration(DefaultBlockCapPer)
	}
	return c
}

func orDefault(v, d int) int {
	if v == 0 {
		return d
	}
	return v
}
