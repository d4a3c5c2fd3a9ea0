package fleet

import (
	"bytes"
	"crypto/ed25519"
	"errors"
	"fmt"
	"github.com/parryhq/parry/agent/api"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/nats-io/nkeys"
	"go.yaml.in/yaml/v3"
)

func TestConfigDecodesStrictly(t *testing.T) {
	const doc = `
servers: ["nats://10.0.0.5:4222", "tls://10.0.0.6:4222"]
name: web-1
credentials: /etc/parry/fleet.creds
tls: {ca: /etc/parry/ca.pem, cert: /etc/parry/c.pem, key: /etc/parry/c.key}
subject_prefix: acme.parry
stream: ACME_PARRY
replicas: 3
queue_size: 500
trusted: {web-1: UDXU4RCSJNZOIQHZNWXHXORDPRTGNJAHAHFRGZNEEJCPQTT2M7NLCNF4}
catchup_timeout: 5s
unblock_ttl: 48h
`
	var c Config
	dec := yaml.NewDecoder(strings.NewReader(doc))
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil {
		t.Fatalf("decode: %v", err)
	}
	want := Config{
		Servers: []string{"nats://10.0.0.5:4222", "tls://10.0.0.6:4222"}, Name: "web-1",
		Credentials: "/etc/parry/fleet.creds", TLS: TLSConfig{CA: "/etc/parry/ca.pem", Cert: "/etc/parry/c.pem", Key: "/etc/parry/c.key"},
		SubjectPrefix: "acme.parry", Stream: "ACME_PARRY", Replicas: 3, QueueSize: 500,
		Trusted:        map[string]string{"web-1": "UDXU4RCSJNZOIQHZNWXHXORDPRTGNJAHAHFRGZNEEJCPQTT2M7NLCNF4"},
		CatchupTimeout: api.Duration(5 * time.Second), UnblockTTL: api.Duration(48 * time.Hour),
	}
	if d := cmp.Diff(want, c); d != "" {
		t.Errorf("decoded config (-want +got):\n%s", d)
	}
	if err := c.Validate(); err != nil {
		t.Errorf("Validate: %v", err)
	}

	dec = yaml.NewDecoder(strings.NewReader("servers: [nats://x:1]\nsubjectprefix: p\n"))
	dec.KnownFields(true)
	if err := dec.Decode(&c); err == nil {
		t.Error("unknown key decoded without error")
	}
}

func TestConfigDefaults(t *testing.T) {
	got := Config{Servers: []string{"nats://h:4222"}}.WithDefaults("host-9")
	if got.Name != "host-9" || got.SubjectPrefix != "parry" || got.Stream != "PARRY_DECISIONS" ||
		got.QueueSize != DefaultQueueSize || got.Replicas != 1 || got.CatchupTimeout.D() != DefaultCatchupTimeout {
		t.Errorf("defaults = %+v", got)
	}
	if s := (Config{SubjectPrefix: "acme.parry"}).WithDefaults("h").Stream; s != "ACME_PARRY_DECISIONS" {
		t.Errorf("stream for prefix acme.parry = %q", s)
	}
	if (Config{}).Enabled() {
		t.Error("zero config enabled; the fleet must be off by default")
	}
}

func TestConfigValidateRejects(t *testing.T) {
	base := func() Config { return Config{Servers: []string{"nats://127.0.0.1:4222"}} }
	for name, tc := range map[string]struct {
		mod  func(*Config)
		want string
	}{
		"scheme":      {func(c *Config) { c.Servers = []string{"http://x:1"} }, "scheme"},
		"no host":     {func(c *Config) { c.Servers = []string{"nats://"} }, "no host"},
		"name":        {func(c *Config) { c.Name = "web 1" }, "name"},
		"wildcard":    {func(c *Config) { c.SubjectPrefix = "parry.>" }, "subject_prefix"},
		"stream":      {func(c *Config) { c.Stream = "a.b" }, "stream"},
		"queue":       {func(c *Config) { c.QueueSize = -1 }, "queue_size"},
		"replicas":    {func(c *Config) { c.Replicas = 9 }, "replicas"},
		"tls pair":    {func(c *Config) { c.TLS.Cert = "/c.pem" }, "cert and key"},
		"trusted key": {func(c *Config) { c.Trusted = map[string]string{"a": "SUAB"} }, "public user nkey"},
		"ttl":         {func(c *Config) { c.UnblockTTL = api.Duration(time.Millisecond) }, "unblock_ttl"},
	} {
		c := base()
		tc.mod(&c)
		err := c.Validate()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: Validate() = %v; want an error about %q", name, err, tc.want)
		}
	}
	if err := (Config{Name: "bad name"}).Validate(); err != nil {
		t.Errorf("a disabled fleet failed validation: %v", err)
	}
}

// TestCredentialsFiles: a seed file and a .creds file both give the host
// its signing key; a file without a user seed, or one that does not match
// the host's entry in trusted, is refused at start.
func TestCredentialsFiles(t *testing.T) {
	dir := t.TempDir()
	kp, _ := nkeys.CreateUser()
	seed, _ := kp.Seed()
	pub, _ := kp.PublicKey()
	other, _ := nkeys.CreateUser()
	otherPub, _ := other.PublicKey()
	creds := fmt.Sprintf("-----BEGIN NATS USER JWT-----\neyJhbGciOi.fake.jwt\n------END NATS USER JWT------\n\n"+
		"-----BEGIN USER NKEY SEED-----\n%s\n------END USER NKEY SEED------\n", seed)
	files := map[string]string{"seed.nk": string(seed), "user.creds": creds, "empty.nk": "no seed here\n"}
	for name, body := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	try := func(file string, trusted map[string]string) (*Fleet, error) {
		return New(Config{Servers: []string{"nats://127.0.0.1:1"}, Name: "a", Credentials: filepath.Join(dir, file), Trusted: trusted},
			&recorder{}, Options{})
	}
	for _, file := range []string{"seed.nk", "user.creds"} {
		f, err := try(file, map[string]string{"a": pub})
		if err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		if !bytes.Equal(f.key.Public().(ed25519.PublicKey), mustVerifyKey(t, pub)) {
			t.Errorf("%s: signing key is not the file's", file)
		}
	}
	if _, err := try("empty.nk", nil); err == nil || !strings.Contains(err.Error(), "no user nkey seed") {
		t.Errorf("file without a seed: err = %v", err)
	}
	if _, err := try("seed.nk", map[string]string{"a": otherPub}); err == nil || !strings.Contains(err.Error(), "is not the key in") {
		t.Errorf("trusted key for a that is not a's: err = %v", err)
	}
	if _, err := try("missing.nk", nil); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: err = %v; want not exist", err)
	}
}

func mustVerifyKey(t *testing.T, pub string) ed25519.PublicKey {
	t.Helper()
	k, err := verifyKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return k
}
