package fleet

import (
	"fmt"
	"github.com/parryhq/parry/test/netns"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nkeys"
)

// BenchmarkFanOut measures, against an in-process nats-server, the time
// for one decision of 10,000 targets published by a to be handed to b's
// applier (no kernel, no store: the fleet's own cost), signed and unsigned.
// Run: go test -run '^$' -bench FanOut -benchtime 3x ./agent/fleet/
func BenchmarkFanOut(b *testing.B) {
	for _, signed := range []bool{false, true} {
		b.Run(fmt.Sprintf("signed=%v", signed), func(b *testing.B) {
			n := startNATS(b, nil)
			var mod func(*Config)
			if signed {
				dir := b.TempDir()
				trusted := map[string]string{}
				var users []*server.NkeyUser
				for _, name := range []string{"a", "b"} {
					kp, _ := nkeys.CreateUser()
					seed, _ := kp.Seed()
					pub, _ := kp.PublicKey()
					if err := os.WriteFile(filepath.Join(dir, name+".nk"), seed, 0o600); err != nil {
						b.Fatal(err)
					}
					trusted[name] = pub
					users = append(users, &server.NkeyUser{Nkey: pub})
				}
				n.Stop()
				n.opts.Nkeys = users
				n.Start(b)
				mod = func(c *Config) { c.Trusted, c.Credentials = trusted, filepath.Join(dir, c.Name+".nk") }
			}
			a, _ := startAgent(b, n.URL, "a", mod)
			bf, rec := startAgent(b, n.URL, "b", mod)
			b.ResetTimer()
			for i := 0; i < b.N && i < 10; i++ {
				d := block(fmt.Sprintf("bulk%d", i), time.Now().Add(time.Hour))
				for j := range 10_000 {
					d.Targets = append(d.Targets, netip.PrefixFrom(netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 13: byte(i), 14: byte(j >> 8), 15: byte(j)}), 128))
				}
				count := func() int { rec.mu.Lock(); defer rec.mu.Unlock(); return len(rec.got) }
				rec.mu.Lock()
				calls := rec.calls
				rec.mu.Unlock()
				start, want := time.Now(), count()+10_000
				a.Publish(d)
				var sent time.Duration
				if !netns.Poll(time.Minute, 5*time.Millisecond, func() bool {
					if sent == 0 && a.Status().Queued == 0 {
						sent = time.Since(start)
					}
					return count() >= want
				}) {
					b.Fatalf("10,000 entries not applied within a minute: %d; a %+v; b %+v", count()-want+10_000, a.Status(), bf.Status())
				}
				rec.mu.Lock()
				groups := rec.calls - calls
				rec.mu.Unlock()
				fmt.Printf("fleet fan-out (signed=%v): 10,000 targets from a handed to b in %v (a's queue empty after %v), in %d apply calls\n", signed, time.Since(start).Round(time.Millisecond), sent.Round(time.Millisecond), groups)
			}
		})
	}
}
