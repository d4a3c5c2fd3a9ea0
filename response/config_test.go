package response

import (
	"bytes"
	"errors"
	"github.com/parryhq/parry/agent/api"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"go.yaml.in/yaml/v3"
)

func decode(t *testing.T, text string) (Config, error) {
	t.Helper()
	var c Config
	dec := yaml.NewDecoder(strings.NewReader(text))
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil {
		return c, err
	}
	return c, c.Validate()
}

const fullConfig = `
dry_run: true
builtin_rules: true
rules:
  - name: auth-failure
    kind: auth_failure
    key: ip
    threshold: 3
    window: 10m
    action: block
    duration: 2h
  - name: tamper
    kind: integrity_violation
    min_severity: critical
    key: none
    action: lockdown
    duration: 15m
    allow: [10.0.0.0/24, "2001:db8:1::/48"]
    isolate: true
  - name: trial
    kind: rate_exceeded
    key: ip+user
    threshold: 100
    window: 1m
    action: block
    duration: 5m
    escalate: false
    dry_run: true
escalation:
  factor: 1.5
  max: 24h
  remember: 168h
senders:
  - user: www-data
    kinds: [auth_failure]
  - group: fail2ban
    kinds: ["*"]
limits:
  max_keys: 5000
  max_offenders: 1000
  cause_signals: 5
  sender_rate: 50
  sender_burst: 100
  max_senders: 64
sender_block_cap: {max: 20, per: 10m}
`

func TestConfigDecode(t *testing.T) {
	c, err := decode(t, fullConfig)
	if err != nil {
		t.Fatalf("decode: %v", err)
	}
	if !c.DryRun || c.Escalation.Remember.D() != 168*time.Hour || c.Limits.SenderRate != 50 || len(c.Senders) != 2 ||
		c.SenderBlockCap != (BlockCap{Max: 20, Per: api.Duration(10 * time.Minute)}) {
		t.Errorf("decoded %+v", c)
	}
	if got := c.Rules[1].Allow; !cmp.Equal(got, []netip.Prefix{netip.MustParsePrefix("10.0.0.0/24"), netip.MustParsePrefix("2001:db8:1::/48")}, cmpopts.EquateComparable(netip.Prefix{})) {
		t.Errorf("allow %v", got)
	}
	// the configured auth-failure replaces the built-in one in place
	rules := c.EffectiveRules()
	if len(rules) != len(DefaultRules())+2 || rules[0].Threshold != 3 || rules[0].Duration.D() != 2*time.Hour {
		t.Errorf("effective rules %+v", rules)
	}
	if *rules[len(rules)-1].Escalate || !*rules[0].Escalate {
		t.Errorf("escalate defaults wrong")
	}
	// an empty section is the built-in policy
	if c, err := decode(t, "{}"); err != nil || len(c.EffectiveRules()) != len(DefaultRules()) {
		t.Errorf("empty config: %v, %d rules", err, len(c.EffectiveRules()))
	}
	// and round trips
	var buf bytes.Buffer
	if err := yaml.NewEncoder(&buf).Encode(c); err != nil {
		t.Fatal(err)
	}
	if _, err := decode(t, buf.String()); err != nil {
		t.Errorf("re-decode of encoded config: %v\n%s", err, buf.String())
	}
}

func TestConfigErrors(t *testing.T) {
	rule := "rules:\n  - {name: r, kind: k, action: block, duration: 1h"
	tests := []struct{ name, text, want string }{
		{"unknown key", "dry_rnu: true", "field dry_rnu not found"},
		{"unknown rule key", rule + ", treshold: 3}", "field treshold not found"},
		{"bad duration", rule + ", window: soon}", "soon"},
		{"bad prefix", "rules:\n  - {name: l, kind: k, action: lockdown, duration: 1h, allow: [10.0.0.0/33]}", "10.0.0.0/33"},
		{"missing name", "rules:\n  - {kind: k, action: notify}", "rules[0].name: missing"},
		{"missing kind", "rules:\n  - {name: r, action: notify}", "kind: missing"},
		{"bad action", "rules:\n  - {name: r, kind: k, action: nuke}", `"nuke" is not one of`},
		{"block without duration", "rules:\n  - {name: r, kind: k, action: block}", "positive duration"},
		{"block by user", rule + ", key: user}", "key must be ip or ip+user"},
		{"lockdown without duration", "rules:\n  - {name: r, kind: k, action: lockdown}", "it always ends"},
		{"bad key", rule + ", key: mac}", `"mac" is not one of`},
		{"bad severity", rule + ", min_severity: dire}", `"dire" is not one of`},
		{"threshold too big", rule + ", threshold: 1000000}", "outside 1..10000"},
		{"allow on block", rule + ", allow: [10.0.0.0/8]}", "only a lockdown"},
		{"duplicate", rule + "}\n  - {name: r, kind: k, action: notify}", "duplicate rule name"},
		{"factor", "escalation: {factor: 0.5}", "escalation.factor"},
		{"sender both", "senders: [{user: a, group: b, kinds: [x]}]", "exactly one of user or group"},
		{"sender no kinds", "senders: [{user: a}]", "senders[0].kinds"},
		{"negative limit", "limits: {max_keys: -1}", "limits.max_keys"},
		{"negative rate", "limits: {sender_rate: -5}", "limits.sender_rate"},
		{"negative block cap", "sender_block_cap: {max: -1}", "sender_block_cap.max"},
		{"block cap interval", "sender_block_cap: {per: 10ms}", "sender_block_cap.per"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := decode(t, tc.text)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error containing %q", err, tc.want)
			}
		})
	}
	// validation errors are typed
	_, err := decode(t, "rules:\n  - {name: r, kind: k, action: nuke}")
	var ce *ConfigError
	if !errors.Is(err, ErrInvalidConfig) || !errors.As(err, &ce) || ce.Field != "rules[0] (r).action" {
		t.Errorf("error %#v", err)
	}
	if _, err := New(Config{Rules: []Rule{{Name: "x"}}}, Options{}); !errors.Is(err, ErrInvalidConfig) {
		t.Errorf("New with bad config: %v", err)
	}
}

func TestAuthorize(t *testing.T) {
	c := Config{Senders: []SenderRule{
		{User: "www-data", Kinds: []string{"auth_failure"}},
		{User: "scanner", Kinds: []string{"scan_detected", "malware_detected"}},
		{Group: "fail2ban", Kinds: []string{"*"}},
	}}
	tests := []struct {
		sender Sender
		kind   string
		ok     bool
	}{
		{webapp, "auth_failure", true},
		{webapp, "scan_detected", false},
		{webapp, "lockdown", false},
		{Sender{UID: 1001, User: "scanner"}, "malware_detected", true},
		{Sender{UID: 1001, User: "scanner"}, "auth_failure", false},
		{Sender{UID: 1002, User: "f2b", Groups: []string{"users", "fail2ban"}}, "anything_at_all", true},
		{Sender{UID: 1003, User: "mallory", Groups: []string{"users"}}, "auth_failure", false},
		{Sender{UID: 1004}, "auth_failure", false},
		// a user named like a group is not its member
		{Sender{UID: 1005, User: "fail2ban"}, "auth_failure", false},
	}
	for _, tc := range tests {
		err := c.Authorize(tc.sender, tc.kind)
		if (err == nil) != tc.ok || (err != nil && !errors.Is(err, ErrUnauthorized)) {
			t.Errorf("Authorize(%s, %s) = %v, want ok=%v", tc.sender, tc.kind, err, tc.ok)
		}
	}
	err := c.Authorize(webapp, "scan_detected")
	if !strings.Contains(err.Error(), "allowed: auth_failure") {
		t.Errorf("error does not say what is allowed: %v", err)
	}
	if err := (Config{}).Authorize(webapp, "auth_failure"); !strings.Contains(err.Error(), "response.senders") {
		t.Errorf("error does not say how to allow: %v", err)
	}
}
