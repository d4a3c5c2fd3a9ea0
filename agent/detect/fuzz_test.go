package detect

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/parryhq/parry/response"
)

func validate(s response.Signal) error { return response.ValidateSignal(s) }

// FuzzMatch: whatever the input, no detector panics; a match yields a valid
// address that is exactly the text of the pattern's ip group in the
// message, and a valid signal; the precheck never rejects a line the
// pattern matches.
func FuzzMatch(f *testing.F) {
	set, err := Builtin()
	if err != nil {
		f.Fatal(err)
	}
	for _, d := range set.Detectors() {
		for _, p := range d.patterns {
			for _, pre := range p.prefixes {
				f.Add(pre + strings.Join(p.needles, " 203.0.113.9 "))
			}
		}
	}
	f.Add("Invalid user x from 6.6.6.6 from 203.0.113.9 port 5555")
	f.Add("Dec  1 09:00:00 h sshd[1]: Failed password for root from ::ffff:1.2.3.4 port 1 ssh2")
	f.Add(`203.0.113.9 - - [01/Dec/2026:09:00:00 +0000] "GET /.env HTTP/1.1" 404 1 "-" "-"`)
	f.Fuzz(func(t *testing.T, line string) {
		for _, d := range set.Detectors() {
			l := Line{Text: line}
			r := d.Match(l)
			msg, ok := d.message(l)
			if !ok {
				if r.Outcome != NotApplicable {
					t.Fatalf("%s: outcome %v on a line it does not read", d.name, r.Outcome)
				}
				continue
			}
			for i := range d.patterns {
				p := &d.patterns[i]
				if len(msg) <= MaxLine && p.re.MatchString(msg) && !p.precheck(msg) {
					t.Fatalf("%s pattern %d: precheck rejects a matching line %q", d.name, i, msg)
				}
			}
			if r.Outcome != Matched {
				continue
			}
			loc := d.patterns[r.Pattern].re.FindStringSubmatchIndex(msg)
			ipi := d.patterns[r.Pattern].ip
			text := msg[loc[2*ipi]:loc[2*ipi+1]]
			ip, err := netip.ParseAddr(text)
			if err != nil || ip.Unmap() != r.Signal.IP || !r.Signal.IP.IsValid() {
				t.Fatalf("%s: ip %v from group text %q (%v)", d.name, r.Signal.IP, text, err)
			}
			if err := validate(r.Signal); err != nil {
				t.Fatalf("%s: invalid signal: %v", d.name, err)
			}
		}
	})
}
