package enforce

import (
	"net/netip"
	"testing"

	"github.com/parryhq/parry/agent/api"
)

func TestGuard(t *testing.T) {
	g := &Guard{
		Allow: []netip.Prefix{netip.MustParsePrefix("198.51.100.0/28"), netip.MustParsePrefix("2001:db8:aaaa::/48")},
		Own:   []netip.Addr{netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("2001:db8::1")},
		MinV4: 16, MinV6: 32,
	}
	tests := []struct {
		target string
		code   string // "" = allowed
	}{
		{"203.0.113.7", ""},
		{"203.0.113.0/24", ""},
		{"10.1.0.0/16", ""},
		{"2001:db8:1::/48", ""},
		{"2001:db9::/32", ""},
		{"127.0.0.1", api.CodeLoopback},
		{"127.0.0.0/8", api.CodeLoopback},
		{"::1", api.CodeLoopback},
		{"169.254.1.1", api.CodeLinkLocal},
		{"fe80::1", api.CodeLinkLocal},
		{"224.0.0.1", api.CodeMulticast},
		{"ff02::1", api.CodeMulticast},
		{"255.255.255.255", api.CodeMulticast},
		{"0.0.0.0", api.CodeUnspecified},
		{"::", api.CodeUnspecified},
		{"0.0.0.0/0", api.CodeTooBroad},
		{"::/0", api.CodeTooBroad},
		{"10.0.0.0/8", api.CodeTooBroad},
		{"10.0.0.0/15", api.CodeTooBroad},
		{"2001::/16", api.CodeTooBroad},
		{"198.51.100.5", api.CodeAllowlisted},
		{"198.51.100.0/24", api.CodeAllowlisted}, // contains the allowlist
		{"198.51.100.16", ""},
		{"2001:db8:aaaa::5", api.CodeAllowlisted},
		{"192.0.2.1", api.CodeOwnAddress},
		{"192.0.2.0/24", api.CodeOwnAddress},
		{"192.0.2.2", ""},
		{"2001:db8::1", api.CodeOwnAddress},
		{"2001:db8::/32", api.CodeAllowlisted}, // contains the allowlisted /48 too; allowlist is checked first
	}
	for _, tt := range tests {
		p, err := api.ParseTarget(tt.target)
		if err != nil {
			t.Fatalf("ParseTarget(%q): %v", tt.target, err)
		}
		e := g.Check(p)
		got := ""
		if e != nil {
			got = e.Code
			if e.Message == "" {
				t.Errorf("%s: refusal without a message", tt.target)
			}
		}
		if got != tt.code {
			t.Errorf("Check(%s) = %q (%v), want %q", tt.target, got, e, tt.code)
		}
	}
}

func TestParseTarget(t *testing.T) {
	tests := []struct{ in, want string }{
		{"203.0.113.7", "203.0.113.7/32"},
		{" 203.0.113.7 ", "203.0.113.7/32"},
		{"198.51.100.7/24", "198.51.100.0/24"},
		{"2001:db8::1", "2001:db8::1/128"},
		{"2001:DB8::/48", "2001:db8::/48"},
		{"::ffff:203.0.113.7", "203.0.113.7/32"},
		{"::ffff:203.0.113.0/120", "203.0.113.0/24"},
		{"", ""},
		{"example.com", ""},
		{"203.0.113.7/33", ""},
		{"fe80::1%eth0", ""},
		{"203.0.113.7/", ""},
		{"1.2.3.4.5", ""},
		{"::ffff:0:0/90", ""},
	}
	for _, tt := range tests {
		p, err := api.ParseTarget(tt.in)
		if tt.want == "" {
			if err == nil {
				t.Errorf("ParseTarget(%q) = %v, want an error", tt.in, p)
			}
			continue
		}
		if err != nil || p.String() != tt.want {
			t.Errorf("ParseTarget(%q) = %v, %v; want %s", tt.in, p, err, tt.want)
		}
	}
}
