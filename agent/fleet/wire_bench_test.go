package fleet

import (
	"crypto/ed25519"
	"testing"
	"time"

	"github.com/nats-io/nkeys"
)

// BenchmarkWireCost: the cost per entry of encoding, signing and verifying.
// Run: go test -run '^$' -bench WireCost ./agent/fleet/
func BenchmarkWireCost(b *testing.B) {
	kp, _ := nkeys.CreateUser()
	e := entries(block("x", time.Now().Add(time.Hour), "203.0.113.7/32"), "a", time.Now())[0]
	b.Run("encode", func(b *testing.B) {
		for b.Loop() {
			_, _, _ = encode(e, nil)
		}
	})
	b.Run("encode+sign", func(b *testing.B) {
		for b.Loop() {
			_, _, _ = encode(e, privKey(kp))
		}
	})
	body, sig, _ := encode(e, privKey(kp))
	pub, _ := kp.PublicKey()
	pk, _ := verifyKey(pub)
	tr := map[string]ed25519.PublicKey{"a": pk}
	b.Run("decode+verify", func(b *testing.B) {
		for b.Loop() {
			_, _ = decode("parry.d.4.203-0-113-7_32", body, sig, "parry", tr)
		}
	})
}
