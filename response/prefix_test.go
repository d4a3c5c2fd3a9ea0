package response

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// Rules count and block an address per prefix: an IPv6 host hopping
// inside its /64 by default, an IPv4 /24 when the rule says ip/24, and
// the address alone when prefix_v6: 128 says so. Escalation follows the
// prefix; a prefix holding a protected address blocks the address only.
func TestPrefixKeys(t *testing.T) {
	hop := func(prefix string, n int) []Signal {
		var out []Signal
		for i := range n {
			out = append(out, authFailure(fmt.Sprintf(prefix, i+1)))
		}
		return out
	}
	for _, c := range []struct {
		name    string
		cfg     Config
		protect []netip.Prefix
		steps   [][]Signal // each step's signals, then the clock moves 2h
		want    [][]string // decisions of each step
		keys    []string   // progress keys of the first signal
	}{
		{name: "ipv6 hops inside its /64 (built-in)", steps: [][]Signal{hop("2001:db8:0:1::%x", 5)},
			want: [][]string{{"block 2001:db8:0:1::/64 until=t0+1h0m0s rule=auth-failure sender=uid=33(www-data) cause=5"}},
			keys: []string{"ip 2001:db8:0:1::/64"}},
		{name: "ipv6 per address when the admin says so", cfg: Config{PrefixV6: 128}, steps: [][]Signal{hop("2001:db8:0:1::%x", 5)},
			want: [][]string{nil}, keys: []string{"ip 2001:db8:0:1::1"}},
		{name: "ipv4 per address by default", steps: [][]Signal{hop("203.0.113.%d", 5)}, want: [][]string{nil}, keys: []string{"ip 203.0.113.1"}},
		{name: "ipv4 per /24 with key ip/24",
			cfg:   Config{Rules: []Rule{{Name: "auth-failure", Kind: "auth_failure", Key: "ip/24", Threshold: 5, Window: 900e9, Action: ActionBlock, Duration: 3600e9}}},
			steps: [][]Signal{hop("203.0.113.%d", 5)},
			want:  [][]string{{"block 203.0.113.0/24 until=t0+1h0m0s rule=auth-failure sender=uid=33(www-data) cause=5"}},
			keys:  []string{"ip 203.0.113.0/24"}},
		{name: "escalation follows the /64", steps: [][]Signal{hop("2001:db8:0:1::%x", 5), hop("2001:db8:0:1::1%x", 5)},
			want: [][]string{{"block 2001:db8:0:1::/64 until=t0+1h0m0s rule=auth-failure sender=uid=33(www-data) cause=5"},
				{"block 2001:db8:0:1::/64 until=t0+3h1m0s rule=auth-failure sender=uid=33(www-data) cause=5"}}},
		{name: "a /64 holding a protected address blocks the address", protect: []netip.Prefix{netip.MustParsePrefix("2001:db8:0:1::99/128")},
			steps: [][]Signal{append(hop("2001:db8:0:1::%x", 4), authFailure("2001:db8:0:1::1"))},
			want:  [][]string{{"block 2001:db8:0:1::1/128 until=t0+1h0m0s rule=auth-failure sender=uid=33(www-data) cause=5"}}},
		{name: "ip/64+user", cfg: Config{Rules: []Rule{{Name: "pair", Kind: "auth_failure", Key: "ip/64+user", Threshold: 2, Window: 900e9, Action: ActionNotify}},
			BuiltinRules: new(bool)},
			steps: [][]Signal{hop("2001:db8:0:2::%x", 2)}, want: [][]string{{"notify rule=pair sender=uid=33(www-data) cause=2"}},
			keys: []string{"ip 2001:db8:0:2::/64 user alice"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			clk := &clock{t: t0}
			e, err := New(c.cfg, Options{Now: clk.now, Protect: c.protect})
			if err != nil {
				t.Fatal(err)
			}
			for i, step := range c.steps {
				var got []Decision
				for j, s := range step {
					r := mustHandle(t, e, s)
					if i == 0 && j == 0 && c.keys != nil {
						var keys []string
						for _, p := range r.Progress {
							if p.Rule == "auth-failure" || p.Rule == "pair" {
								keys = append(keys, p.Key)
							}
						}
						if diff := cmp.Diff(c.keys, keys); diff != "" {
							t.Errorf("progress keys (-want +got):\n%s", diff)
						}
					}
					for _, d := range r.Decisions {
						if d.Rule == "auth-failure" || d.Rule == "pair" {
							got = append(got, d)
						}
					}
				}
				if diff := cmp.Diff(c.want[i], render(got)); diff != "" {
					t.Errorf("step %d (-want +got):\n%s", i, diff)
				}
				clk.advance(time.Hour + time.Minute) // the first block is over, the offender remembered
			}
		})
	}
}

func TestPrefixKeyConfig(t *testing.T) {
	for _, c := range []struct {
		rule Rule
		bad  string
	}{
		{Rule{Key: "ip/64"}, ""},
		{Rule{Key: "ip/24"}, ""},
		{Rule{Key: "ip/64+user"}, ""},
		{Rule{PrefixV6: 56, PrefixV4: 28}, ""},
		{Rule{Key: "ip/7"}, "key"},
		{Rule{Key: "ip/129"}, "key"},
		{Rule{Key: "ip/064"}, "key"},
		{Rule{Key: "ip/64", PrefixV6: 48}, "key"},
		{Rule{PrefixV6: 16}, "prefix_v6"},
		{Rule{Key: "user", PrefixV4: 24, Action: ActionNotify}, "prefix_v4"},
	} {
		r := c.rule
		r.Name, r.Kind = "r", "k"
		if r.Action == "" {
			r.Action, r.Duration = ActionBlock, 60e9
		}
		err := Config{Rules: []Rule{r}}.Validate()
		switch {
		case c.bad == "" && err != nil:
			t.Errorf("%+v: %v", c.rule, err)
		case c.bad != "" && (!errors.Is(err, ErrInvalidConfig) || !strings.Contains(err.Error(), c.bad)):
			t.Errorf("%+v: %v, want an error about %s", c.rule, err, c.bad)
		}
	}
	if err := (Config{PrefixV6: 200}).Validate(); !errors.Is(err, ErrInvalidConfig) {
		t.Errorf("prefix_v6: 200: %v", err)
	}
}
