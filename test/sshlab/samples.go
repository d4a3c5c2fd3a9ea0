package sshlab

import (
	"bufio"
	"embed"
	"fmt"
	"io"
	"net/netip"
	"strconv"
	"strings"
)

// Samples holds the recorded golden samples (testdata/, see its README.md):
// openssh-9.2.log, openssh-9.2.info.log, openssh-9.2.journal.json and
// openssh-9.2.auth.log.
//
//go:embed testdata/*.log testdata/*.json
var Samples embed.FS

// Sample is one recorded attempt of a .log sample file: what the client did
// and the lines sshd logged for it.
type Sample struct {
	Kind   string     // attempt kind, such as failed-password or kex-probe
	Attack bool       // a detector should count it against Client
	Client netip.Addr // the address the connection came from
	User   string     // the user name the client sent ("" when none)
	Note   string
	Lines  []string
}

// maxSampleLine bounds one line of a sample file.
const maxSampleLine = 64 << 10

// ParseSamples reads a .log sample file: blocks of sshd's lines, each after
// a header `# attempt kind=K attack=yes|no client=ADDR user="U" note="N"`.
// Other lines starting with # (the file's preamble, # startup, # shutdown)
// end the current block and are skipped with what follows them up to the
// next attempt.
func ParseSamples(r io.Reader) ([]Sample, error) {
	var out []Sample
	var cur *Sample
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 4096), maxSampleLine)
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		if rest, ok := strings.CutPrefix(line, "# attempt "); ok {
			s, err := parseHeader(rest)
			if err != nil {
				return nil, fmt.Errorf("sample line %d: %w", n, err)
			}
			out = append(out, s)
			cur = &out[len(out)-1]
			continue
		}
		if strings.HasPrefix(line, "#") {
			cur = nil
			continue
		}
		if cur != nil {
			cur.Lines = append(cur.Lines, line)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("samples: %w", err)
	}
	return out, nil
}

// parseHeader parses `kind=K attack=yes|no client=ADDR user="U" note="N"`.
func parseHeader(s string) (Sample, error) {
	var smp Sample
	fields := map[string]string{}
	for _, key := range []string{"kind", "attack", "client", "user", "note"} {
		rest, ok := strings.CutPrefix(s, key+"=")
		if !ok {
			return smp, fmt.Errorf("header %q: want %s= next", s, key)
		}
		if !strings.HasPrefix(rest, `"`) {
			fields[key], s, _ = strings.Cut(rest, " ")
			continue
		}
		q, err := strconv.QuotedPrefix(rest)
		if err != nil {
			return smp, fmt.Errorf("header %s: %w", key, err)
		}
		if fields[key], err = strconv.Unquote(q); err != nil {
			return smp, fmt.Errorf("header %s: %w", key, err)
		}
		s = strings.TrimPrefix(rest[len(q):], " ")
	}
	if s != "" {
		return smp, fmt.Errorf("header: unexpected %q at the end", s)
	}
	addr, err := netip.ParseAddr(fields["client"])
	if err != nil {
		return smp, fmt.Errorf("header client: %w", err)
	}
	switch fields["attack"] {
	case "yes":
		smp.Attack = true
	case "no":
	default:
		return smp, fmt.Errorf("header attack=%q: want yes or no", fields["attack"])
	}
	smp.Kind, smp.Client, smp.User, smp.Note = fields["kind"], addr, fields["user"], fields["note"]
	return smp, nil
}
