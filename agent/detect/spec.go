// Package detect turns log lines into signals. A detector is declared in
// YAML (see docs/sources.md): the sources it applies to, anchored RE2
// patterns with the named groups ip, user and port, the signal kind they
// produce, and ignore patterns. The built-in detectors (sshd, nginx-*,
// apache-auth, postfix-sasl, dovecot, vsftpd) ship embedded in the binary.
//
// Everything a detector reads is attacker-controlled text. Patterns are
// anchored at both ends of the message; the ip group of every built-in
// pattern sits where only the logging program writes (right before
// " port N", at a fixed offset, or before a fixed tail), so a user name like
// "x from 6.6.6.6" cannot choose whom parry blocks. A line that was cut
// (longer than MaxLine) never matches.
package detect

import (
	"bytes"
	"errors"
	"fmt"
	"io"

	"go.yaml.in/yaml/v3"
)

// Spec is one detector as written in YAML. It decodes strictly: unknown
// keys are an error.
type Spec struct {
	Name        string    `yaml:"name"`        // [a-z0-9][a-z0-9._-]*, at most 64
	Description string    `yaml:"description"` // human text
	Kind        string    `yaml:"kind"`        // signal kind of patterns that name none
	Severity    string    `yaml:"severity"`    // "", low, medium, high, critical
	Header      string    `yaml:"header"`      // "none" (default) or "syslog": file lines may carry a syslog header
	Sources     Sources   `yaml:"sources"`     // where its lines come from
	Patterns    []Pattern `yaml:"patterns"`    // at least one; each needs an ip group
	Ignore      []Pattern `yaml:"ignore"`      // lines recognised and not counted
}

// Sources says which lines a detector applies to. A journal line applies
// when its unit matches one of Units (if any are given) and its
// SYSLOG_IDENTIFIER one of Identifiers (if any are given). Files are path
// globs (filepath.Match) a file source is checked against once, when it is
// set up. The unit is set by journald and cannot be forged by a local user;
// the identifier can (logger -t sshd), which is why the built-ins require
// both.
type Sources struct {
	Units       []string `yaml:"units"`       // systemd units, globs allowed: "ssh.service", "ssh@*.service"
	Identifiers []string `yaml:"identifiers"` // SYSLOG_IDENTIFIER values: "sshd", "sshd-session"
	Files       []string `yaml:"files"`       // absolute path globs: "/var/log/auth.log"
}

// Pattern is one RE2 pattern. In YAML it is either a string or a mapping
// with match and kind. Line is the YAML line it was read from (0 when built
// in Go), used in errors.
type Pattern struct {
	Match string // the pattern, ^...$
	Kind  string // overrides the detector's kind
	Line  int
}

// UnmarshalYAML reads a pattern from a string or a {match, kind} mapping,
// rejecting unknown keys, and records its line.
func (p *Pattern) UnmarshalYAML(n *yaml.Node) error {
	p.Line = n.Line
	switch n.Kind {
	case yaml.ScalarNode:
		return n.Decode(&p.Match)
	case yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			switch k.Value {
			case "match":
				if err := v.Decode(&p.Match); err != nil {
					return err
				}
			case "kind":
				if err := v.Decode(&p.Kind); err != nil {
					return err
				}
			default:
				return fmt.Errorf("line %d: unknown pattern key %q (want match, kind)", k.Line, k.Value)
			}
		}
		return nil
	}
	return fmt.Errorf("line %d: a pattern is a string or a mapping with match and kind", n.Line)
}

// Decode reads one detector from YAML, strictly. name is used in errors
// (a file name).
func Decode(name string, b []byte) (Spec, error) {
	var s Spec
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&s); err != nil {
		if errors.Is(err, io.EOF) {
			return s, fmt.Errorf("detector %s: empty document", name)
		}
		return s, fmt.Errorf("detector %s: %w", name, err)
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		return s, fmt.Errorf("detector %s: more than one YAML document", name)
	}
	return s, nil
}
