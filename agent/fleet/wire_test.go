package fleet

import (
	"bytes"
	"crypto/ed25519"
	"errors"
	"net/netip"
	"testing"
	"time"

	"github.com/nats-io/nkeys"

	"github.com/parryhq/parry/response"
)

func TestSubjectFor(t *testing.T) {
	for in, want := range map[string]string{
		"203.0.113.7/32":     "parry.d.4.203-0-113-7_32",
		"198.51.100.0/24":    "parry.d.4.198-51-100-0_24",
		"2001:db8::1/128":    "parry.d.6.2001-db8--1_128",
		"::ffff:1.2.3.4/128": "parry.d.6.--ffff-1-2-3-4_128",
	} {
		if got := subjectFor("parry", netip.MustParsePrefix(in)); got != want {
			t.Errorf("subjectFor(%s) = %s; want %s", in, got, want)
		}
	}
}

func TestEntries(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	d := block("x", now.Add(time.Hour), "203.0.113.7/24", "2001:db8::1/128")
	es := entries(d, "a", now)
	if len(es) != 2 || es[0].ID != "x#0" || es[1].ID != "x#1" || es[0].Target.String() != "203.0.113.0/24" || es[0].Origin != "a" {
		t.Fatalf("entries = %+v", es)
	}
	for name, d := range map[string]response.Decision{
		"lockdown": {ID: "l", Action: response.ActionLockdown, Until: now.Add(time.Hour)},
		"expired":  block("e", now.Add(-time.Second), "203.0.113.7/32"),
		"remote": func() response.Decision {
			d := block("r", now.Add(time.Hour), "203.0.113.7/32")
			d.Origin = "b"
			return d
		}(),
		"no id": block("", now.Add(time.Hour), "203.0.113.7/32"),
	} {
		if es := entries(d, "a", now); len(es) != 0 {
			t.Errorf("%s: %d entries; want none", name, len(es))
		}
	}
	if es := entries(block("p", time.Time{}, "203.0.113.7/32"), "a", now); len(es) != 1 || !es[0].Until.IsZero() {
		t.Errorf("permanent block entries = %+v", es)
	}
}

func TestDecodeChecks(t *testing.T) {
	kp, _ := nkeys.CreateUser()
	other, _ := nkeys.CreateUser()
	pub, _ := kp.PublicKey()
	pk, err := verifyKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	trusted := map[string]ed25519.PublicKey{"a": pk}
	e := entries(block("x", time.Now().Add(time.Hour), "203.0.113.7/32"), "a", time.Now())[0]
	subj := subjectFor("parry", e.Target)
	body, sig, _ := encode(e, privKey(kp))
	if _, err := decode(subj, body, sig, "parry", trusted); err != nil {
		t.Fatalf("genuine entry: %v", err)
	}
	_, badSig, _ := encode(e, privKey(other))
	tampered := bytes.Replace(body, []byte(`"reason":"test"`), []byte(`"reason":"tesu"`), 1)
	for name, tc := range map[string]struct {
		subj, sig string
		body      []byte
		want      error
	}{
		"unsigned":    {subj, "", body, ErrUnsigned},
		"wrong key":   {subj, badSig, body, ErrBadSignature},
		"tampered":    {subj, sig, tampered, ErrBadSignature},
		"not base64":  {subj, "!!", body, ErrBadSignature},
		"wrong subj":  {"parry.d.4.203-0-113-8_32", sig, body, ErrBadMessage},
		"garbage":     {subj, sig, []byte("{"), ErrBadMessage},
		"huge":        {subj, sig, make([]byte, maxBodyBytes+1), ErrBadMessage},
		"bad action":  {subj, "", []byte(`{"v":1,"id":"x","origin":"a","action":"lockdown","target":"203.0.113.7/32"}`), ErrBadMessage},
		"unmasked":    {subj, "", []byte(`{"v":1,"id":"x","origin":"a","action":"block","target":"203.0.113.7/24"}`), ErrBadMessage},
		"bad version": {subj, "", []byte(`{"v":2,"id":"x","origin":"a","action":"block","target":"203.0.113.7/32"}`), ErrBadMessage},
	} {
		if _, err := decode(tc.subj, tc.body, tc.sig, "parry", trusted); !errors.Is(err, tc.want) {
			t.Errorf("%s: err = %v; want %v", name, err, tc.want)
		}
	}
	other2 := entries(block("y", time.Now().Add(time.Hour), "203.0.113.7/32"), "z", time.Now())[0]
	body2, sig2, _ := encode(other2, privKey(other))
	if _, err := decode(subj, body2, sig2, "parry", trusted); !errors.Is(err, ErrUntrusted) {
		t.Errorf("untrusted origin: err = %v; want %v", err, ErrUntrusted)
	}
	if _, err := decode(subj, body2, "", "parry", nil); err != nil {
		t.Errorf("no trust configured: unsigned entry rejected: %v", err)
	}
}
