package evidence

import (
	"context"
	"net/netip"
	"os/exec"
	"testing"
)

// BenchmarkCapture: one full snapshot of this host.
func BenchmarkCapture(b *testing.B) {
	c := NewCollector(Config{}, nil)
	for range b.N {
		s, err := c.Capture(context.Background(), "bench", "")
		if err != nil || s.Incomplete {
			b.Fatal(err, s.Errors)
		}
	}
}

// BenchmarkConnectionsOf: the block-time lookup of one address's
// connections, against the alternative of asking ss(8) (a subprocess, with
// process names).
func BenchmarkConnectionsOf(b *testing.B) {
	target := []netip.Prefix{netip.MustParsePrefix("240.0.0.1/32")}
	b.Run("gopsutil", func(b *testing.B) {
		c := NewCollector(Config{}, nil)
		for range b.N {
			if _, err := c.ConnectionsOf(context.Background(), target); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("ss", func(b *testing.B) {
		if _, err := exec.LookPath("ss"); err != nil {
			b.Skip("no ss")
		}
		for range b.N {
			if err := exec.Command("ss", "-Htunp", "dst", "240.0.0.1").Run(); err != nil {
				b.Fatal(err)
			}
		}
	})
}
