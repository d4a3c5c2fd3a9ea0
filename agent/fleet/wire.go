package fleet

import (
	"bytes"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/nats-io/nkeys"

	"github.com/parryhq/parry/response"
)

// wireVersion is the version of the message body; receivers reject others.
const wireVersion = 1

// Limits on what a received message may carry.
const (
	maxBodyBytes = 64 << 10
	maxIDLen     = 128
	maxText      = 1024
	maxCause     = 16
)

// sigHeader carries the base64url ed25519 signature of the body by the
// origin's nkey.
const sigHeader = "Parry-Sig"

// entry is one fleet message: one decision about one target. A decision with
// several targets becomes several entries, so that the stream keeps exactly
// the latest decision about every target (one subject per target).
type entry struct {
	V      int               `json:"v"`
	ID     string            `json:"id"`     // the decision's id (suffixed #i for multi-target decisions)
	Origin string            `json:"origin"` // fleet name of the host that decided
	Action response.Action   `json:"action"` // block or unblock
	Target netip.Prefix      `json:"target"`
	Until  time.Time         `json:"until,omitzero"` // block: absolute expiry; zero: permanent
	Issued time.Time         `json:"issued"`
	Reason string            `json:"reason,omitempty"`
	Source string            `json:"source,omitempty"`
	Rule   string            `json:"rule,omitempty"`
	Cause  []response.Signal `json:"cause,omitempty"`
}

// Errors of received messages. They are counted as rejected, never applied.
var (
	ErrBadMessage   = errors.New("fleet: malformed decision")
	ErrUnsigned     = errors.New("fleet: decision not signed")
	ErrUntrusted    = errors.New("fleet: decision origin not trusted")
	ErrBadSignature = errors.New("fleet: bad decision signature")
)

// subjectFor returns the subject holding the latest decision about p:
// PREFIX.d.4.203-0-113-7_32 or PREFIX.d.6.2001-db8--1_128.
func subjectFor(prefix string, p netip.Prefix) string {
	fam := "4"
	if p.Addr().Is6() {
		fam = "6"
	}
	s := strings.NewReplacer(".", "-", ":", "-", "/", "_").Replace(p.String())
	return prefix + ".d." + fam + "." + s
}

// entries splits a local decision into fleet entries. Only blocks and
// unblocks travel; lockdowns, dry runs, remote decisions and expired blocks
// do not.
func entries(d response.Decision, self string, now time.Time) []entry {
	if d.Action != response.ActionBlock && d.Action != response.ActionUnblock {
		return nil
	}
	if d.DryRun || (d.Origin != "" && d.Origin != self) || d.ID == "" {
		return nil
	}
	if d.Action == response.ActionBlock && !d.Until.IsZero() && !d.Until.After(now) {
		return nil
	}
	cause := d.Cause
	if len(cause) > maxCause {
		cause = cause[:maxCause]
	}
	out := make([]entry, 0, len(d.Targets))
	for i, t := range d.Targets {
		id := d.ID
		if len(d.Targets) > 1 {
			id = fmt.Sprintf("%s#%d", d.ID, i)
		}
		e := entry{
			V: wireVersion, ID: id, Origin: self, Action: d.Action, Target: t.Masked(),
			Issued: now.UTC(), Reason: clip(d.Reason), Source: d.Source, Rule: clip(d.Rule), Cause: cause,
		}
		if d.Action == response.ActionBlock && !d.Until.IsZero() {
			e.Until = d.Until.UTC()
		}
		out = append(out, e)
	}
	return out
}

func clip(s string) string {
	if len(s) > maxText {
		return s[:maxText]
	}
	return s
}

// signingKey derives the ed25519 key of a user nkey once (nkeys derives
// it again on every Sign, which doubles the cost of signing).
func signingKey(kp nkeys.KeyPair) (ed25519.PrivateKey, error) {
	seed, err := kp.Seed()
	if err != nil {
		return nil, err
	}
	_, raw, err := nkeys.DecodeSeed(seed)
	if err != nil {
		return nil, err
	}
	return ed25519.NewKeyFromSeed(raw), nil
}

// verifyKey decodes a public user nkey (U...).
func verifyKey(pub string) (ed25519.PublicKey, error) {
	raw, err := nkeys.Decode(nkeys.PrefixByteUser, []byte(pub))
	if err != nil {
		return nil, err
	}
	if len(raw) != ed25519.PublicKeySize {
		return nil, nkeys.ErrInvalidPublicKey
	}
	return ed25519.PublicKey(raw), nil
}

// encode marshals e and signs it with key (nil: unsigned). It returns the
// body and the signature header value ("" when unsigned).
func encode(e entry, key ed25519.PrivateKey) ([]byte, string, error) {
	body, err := json.Marshal(e)
	if err != nil {
		return nil, "", fmt.Errorf("encode decision: %w", err)
	}
	if len(body) > maxBodyBytes {
		e.Cause = nil
		if body, err = json.Marshal(e); err != nil {
			return nil, "", fmt.Errorf("encode decision: %w", err)
		}
	}
	if key == nil {
		return body, "", nil
	}
	return body, base64.RawURLEncoding.EncodeToString(ed25519.Sign(key, body)), nil
}

// decode parses and checks a received message (parse, then verify).
func decode(subject string, body []byte, sig, prefix string, trusted map[string]ed25519.PublicKey) (entry, error) {
	e, err := parse(subject, body, prefix)
	if err != nil {
		return e, err
	}
	return e, verify(e, body, sig, trusted)
}

// parse decodes a received message and checks its form, not its signature.
func parse(subject string, body []byte, prefix string) (entry, error) {
	var e entry
	if len(body) > maxBodyBytes {
		return e, fmt.Errorf("%w: %d bytes", ErrBadMessage, len(body))
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	if err := dec.Decode(&e); err != nil {
		return e, fmt.Errorf("%w: %w", ErrBadMessage, err)
	}
	switch {
	case e.V != wireVersion:
		return e, fmt.Errorf("%w: version %d", ErrBadMessage, e.V)
	case e.ID == "" || len(e.ID) > maxIDLen:
		return e, fmt.Errorf("%w: id", ErrBadMessage)
	case !nameRE.MatchString(e.Origin):
		return e, fmt.Errorf("%w: origin %q", ErrBadMessage, e.Origin)
	case e.Action != response.ActionBlock && e.Action != response.ActionUnblock:
		return e, fmt.Errorf("%w: action %q", ErrBadMessage, e.Action)
	case !e.Target.IsValid() || e.Target != e.Target.Masked():
		return e, fmt.Errorf("%w: target %v", ErrBadMessage, e.Target)
	case subject != subjectFor(prefix, e.Target):
		return e, fmt.Errorf("%w: target %v on subject %s", ErrBadMessage, e.Target, subject)
	case len(e.Cause) > maxCause:
		return e, fmt.Errorf("%w: %d cause signals", ErrBadMessage, len(e.Cause))
	}
	return e, nil
}

// verify checks the signature of a parsed entry. trusted maps origin names
// to public keys; when it is empty signatures are not required (and a
// present one is not checked: there is nothing to check it against).
func verify(e entry, body []byte, sig string, trusted map[string]ed25519.PublicKey) error {
	if len(trusted) == 0 {
		return nil
	}
	key, ok := trusted[e.Origin]
	if !ok {
		return fmt.Errorf("%w: %q", ErrUntrusted, e.Origin)
	}
	if sig == "" {
		return fmt.Errorf("%w: from %q", ErrUnsigned, e.Origin)
	}
	raw, err := base64.RawURLEncoding.DecodeString(sig)
	if err != nil {
		return fmt.Errorf("%w: from %q: %w", ErrBadSignature, e.Origin, err)
	}
	if !ed25519.Verify(key, body, raw) {
		return fmt.Errorf("%w: from %q", ErrBadSignature, e.Origin)
	}
	return nil
}

// decision turns a received entry into the decision the agent enforces.
func (e entry) decision() response.Decision {
	return response.Decision{
		ID: e.ID, Action: e.Action, Targets: []netip.Prefix{e.Target}, Until: e.Until,
		Reason: e.Reason, Source: "fleet", Origin: e.Origin, Rule: e.Rule, Cause: e.Cause,
	}
}
