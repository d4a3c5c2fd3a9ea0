package detect

import (
	"errors"
	"strings"
	"testing"
)

func TestCompileErrors(t *testing.T) {
	base := func() Spec {
		return Spec{Name: "t", Kind: "auth_failure", Patterns: []Pattern{{Match: `^x <IP>$`}}}
	}
	for _, tc := range []struct {
		name string
		edit func(*Spec)
		want []string // substrings of the error
	}{
		{"no anchor at start", func(s *Spec) { s.Patterns[0].Match = `x <IP>$` }, []string{`"t"`, "pattern 1", "anchored"}},
		{"no anchor at end", func(s *Spec) { s.Patterns[0].Match = `^x <IP>` }, []string{"anchored"}},
		{"escaped dollar", func(s *Spec) { s.Patterns[0].Match = `^x <IP>\$` }, []string{"anchored"}},
		{"no ip group", func(s *Spec) { s.Patterns[0].Match = `^x (?P<user>\S+)$` }, []string{"no ip group"}},
		{"unknown group", func(s *Spec) { s.Patterns[0].Match = `^x <IP> (?P<host>\S+)$` }, []string{`unknown group "host"`}},
		{"twice", func(s *Spec) { s.Patterns[0].Match = `^(?P<ip>a)|(?P<ip>b)$` }, []string{"twice"}},
		{"bad regexp", func(s *Spec) { s.Patterns[0] = Pattern{Match: `^x (<IP>$`, Line: 12} }, []string{"pattern 1 (line 12)", "missing closing )"}},
		{"backreference", func(s *Spec) { s.Patterns[0].Match = `^(a)\1 <IP>$` }, []string{"invalid escape"}},
		{"lookahead", func(s *Spec) { s.Patterns[0].Match = `^(?!a)<IP>$` }, []string{"invalid or unsupported"}},
		{"no kind", func(s *Spec) { s.Kind = "" }, []string{"no kind"}},
		{"bad kind", func(s *Spec) { s.Patterns[0].Kind = "a b" }, []string{`kind "a b"`}},
		{"bad name", func(s *Spec) { s.Name = "Bad Name" }, []string{"name must be"}},
		{"no patterns", func(s *Spec) { s.Patterns = nil }, []string{"no patterns"}},
		{"ignore unanchored", func(s *Spec) { s.Ignore = []Pattern{{Match: "a", Line: 3}} }, []string{"ignore 1 (line 3)", "anchored"}},
		{"bad header", func(s *Spec) { s.Header = "json" }, []string{"header"}},
		{"bad severity", func(s *Spec) { s.Severity = "huge" }, []string{"severity"}},
		{"relative file", func(s *Spec) { s.Sources.Files = []string{"auth.log"} }, []string{"absolute"}},
		{"bad glob", func(s *Spec) { s.Sources.Files = []string{"/var/log/[x"} }, []string{"syntax error"}},
		{"bad unit", func(s *Spec) { s.Sources.Units = []string{"ssh service"} }, []string{"unit"}},
		{"option unit", func(s *Spec) { s.Sources.Units = []string{"--help"} }, []string{"unit"}},
		{"bad identifier", func(s *Spec) { s.Sources.Identifiers = []string{"sshd;rm"} }, []string{"identifier"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := base()
			tc.edit(&s)
			_, err := Compile(s)
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("err = %v, want ErrInvalid", err)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("err %q lacks %q", err, w)
				}
			}
		})
	}
}

// TestAnchorsHoldOverAlternation: ^a|b$ written by a user is compiled as
// ^(?:^a|b$)$, so neither branch matches part of a line.
func TestAnchorsHoldOverAlternation(t *testing.T) {
	d, err := Compile(Spec{Name: "t", Kind: "k", Patterns: []Pattern{{Match: `^a <IP>|[0-9.]+ b$`}}})
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range []string{"a 192.0.2.1 tail", "head 192.0.2.1 b"} {
		if r := d.Match(Line{Text: l}); r.Outcome == Matched {
			t.Errorf("%q matched", l)
		}
	}
	if r := d.Match(Line{Text: "a 192.0.2.1"}); r.Outcome != Matched {
		t.Errorf("whole line: %v", r.Outcome)
	}
}

func TestDecodeStrict(t *testing.T) {
	src := "name: t\nkind: k\npatterns:\n  - '^x <IP>$'\n  - match: '^y <IP>$'\n    kind: probe\n"
	s, err := Decode("t.yaml", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	if len(s.Patterns) != 2 || s.Patterns[0].Line != 4 || s.Patterns[1].Line != 5 || s.Patterns[1].Kind != "probe" {
		t.Fatalf("patterns = %+v", s.Patterns)
	}
	for _, bad := range []struct{ src, want string }{
		{"name: t\nkinds: k\n", "kinds"},
		{"name: t\npatterns:\n  - match: '^x$'\n    knd: a\n", `unknown pattern key "knd"`},
		{"name: t\n---\nname: u\n", "more than one"},
		{"", "empty"},
	} {
		if _, err := Decode("t.yaml", []byte(bad.src)); err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("Decode(%q) = %v, want %q", bad.src, err, bad.want)
		}
	}
	// A bad pattern from YAML is reported with its line.
	s, err = Decode("t.yaml", []byte("name: t\nkind: k\npatterns:\n  - '^x <IP>$'\n  - '^y (<IP>$'\n"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Compile(s); err == nil || !strings.Contains(err.Error(), "pattern 2 (line 5)") {
		t.Errorf("Compile = %v, want pattern 2 (line 5)", err)
	}
}

// TestCutLines: a line the source cut, or one longer than MaxLine, never
// matches, though its first MaxLine bytes would.
func TestCutLines(t *testing.T) {
	set, err := Builtin()
	if err != nil {
		t.Fatal(err)
	}
	d := set.Get("sshd")
	line := "Failed password for root from 203.0.113.9 port 22 ssh2"
	if r := d.Match(Line{Text: line, Cut: true}); r.Outcome != Refused {
		t.Errorf("cut line: %v", r.Outcome)
	}
	long := "Invalid user " + strings.Repeat("a", MaxLine) + " from 203.0.113.9 port 22"
	if r := d.Match(Line{Text: long}); r.Outcome != Refused {
		t.Errorf("long line: %v", r.Outcome)
	}
}

func TestSplitSyslog(t *testing.T) {
	for _, tc := range []struct{ in, prog, msg string }{
		{"Dec  1 09:00:00 host sshd[12]: hello", "sshd", "hello"},
		{"Dec 11 09:00:00 host sshd-session[12]: hello: x", "sshd-session", "hello: x"},
		{"2026-12-01T09:00:00.123456+00:00 host postfix/smtpd[1]: m", "postfix/smtpd", "m"},
		{"2026-12-01T09:00:00Z host dovecot: m", "dovecot", "m"},
		{"Dec  1 09:00:00 host kernel: [ 1.0] x", "kernel", "[ 1.0] x"},
	} {
		p, m, ok := splitSyslog(tc.in)
		if !ok || p != tc.prog || m != tc.msg {
			t.Errorf("splitSyslog(%q) = %q, %q, %v", tc.in, p, m, ok)
		}
	}
	for _, in := range []string{"", "Failed password for root", "Dec  1 09:00:00 host", "Dec  1 09:00:00 host sshd[x]: m",
		"Tue Dec  1 09:00:00 2026 [pid 1] x", "2026/12/01 09:00:00 [error] 1#1: x", "Dec  1 09:00:00 host sshd[1]:m"} {
		if p, m, ok := splitSyslog(in); ok {
			t.Errorf("splitSyslog(%q) = %q, %q, true", in, p, m)
		}
	}
}

func TestRequiredLiterals(t *testing.T) {
	for _, tc := range []struct {
		re       string
		prefixes []string
		needles  []string
	}{
		{`^Failed (?:password|none) for (?P<user>.*) from <IP> port <PORT> ssh2$`, []string{"Failed password for ", "Failed none for "}, []string{" ssh2", " from "}},
		{`^(?:error: )?max (?:ab|cd) <IP>$`, []string{"max ab ", "max cd ", "error: max ab ", "error: max cd "}, nil},
		{`^(?:error: )?[a-z]+ <IP>$`, nil, nil},
		{`^<IP> - .* "GET /(?i:wp) HTTP/[0-9.]+" 404 .*$`, nil, []string{`" 404 `, ` "GET /`}},
		{`^(?:a|b)x <IP>$`, nil, nil}, // [ab]: a class, not literals
	} {
		p, err := compilePattern(Pattern{Match: tc.re}, true)
		if err != nil {
			t.Fatal(err)
		}
		if strings.Join(p.prefixes, "|") != strings.Join(tc.prefixes, "|") || strings.Join(p.needles, "|") != strings.Join(tc.needles, "|") {
			t.Errorf("%s: prefixes %q needles %q, want %q %q", tc.re, p.prefixes, p.needles, tc.prefixes, tc.needles)
		}
	}
}

func TestSetSelection(t *testing.T) {
	set, err := Builtin()
	if err != nil {
		t.Fatal(err)
	}
	names := func(s *Set) (out []string) {
		for _, d := range s.Detectors() {
			out = append(out, d.Name())
		}
		return out
	}
	if got := strings.Join(names(set.ForFile("/var/log/auth.log")), ","); got != "sshd" {
		t.Errorf("ForFile(auth.log) = %s", got)
	}
	if got := strings.Join(names(set.ForFile("/var/log/nginx/error.log")), ","); got != "nginx-http-auth,nginx-limit-req" {
		t.Errorf("ForFile(nginx error.log) = %s", got)
	}
	if got := strings.Join(names(set.ForFile("/var/log/mail.log")), ","); got != "dovecot,postfix-sasl" {
		t.Errorf("ForFile(mail.log) = %s", got)
	}
	units, ids := NewSet(set.Get("sshd")).Journal()
	if strings.Join(units, ",") != "ssh.service,sshd.service" || strings.Join(ids, ",") != "sshd,sshd-auth,sshd-session" {
		t.Errorf("Journal() = %v %v", units, ids)
	}
	mine, err := Compile(Spec{Name: "sshd", Kind: "auth_failure", Sources: Sources{Files: []string{"/var/log/auth.log"}},
		Patterns: []Pattern{{Match: `^x <IP>$`}}})
	if err != nil {
		t.Fatal(err)
	}
	extra, _ := Compile(Spec{Name: "zz", Kind: "k", Patterns: []Pattern{{Match: `^y <IP>$`}}})
	with := set.With(mine, extra)
	if with.Get("sshd") != mine || with.Get("zz") != extra || len(with.Detectors()) != len(set.Detectors())+1 || set.Get("sshd") == mine {
		t.Errorf("With: %v", names(with))
	}
	// mail.log carries both postfix and dovecot lines: each goes to its own.
	mail := set.ForFile("/var/log/mail.log")
	r := mail.Match(Line{Text: "Dec  1 09:00:00 mail dovecot: imap-login: Disconnected (auth failed, 1 attempts in 2 secs): user=<bob>, method=PLAIN, rip=203.0.113.9, lip=192.0.2.1, session=<x>"})
	if r.Outcome != Matched || r.Detector != "dovecot" {
		t.Errorf("mail.log dovecot line: %+v", r)
	}
	r = mail.Match(Line{Text: "Dec  1 09:00:00 mail postfix/smtpd[1]: connect from unknown[203.0.113.9]"})
	if r.Outcome != Missed {
		t.Errorf("mail.log connect line: %v", r.Outcome)
	}
	// A journal entry with neither unit nor identifier reaches no detector.
	if r := set.Match(Line{Text: "Failed password for root from 203.0.113.9 port 22 ssh2", Journal: true}); r.Outcome != NotApplicable {
		t.Errorf("journal line without unit: %v", r.Outcome)
	}
	if r := set.Match(Line{Text: "x", Journal: true, Unit: "cron.service", Identifier: "CRON"}); r.Outcome != NotApplicable {
		t.Errorf("cron journal line: %v", r.Outcome)
	}
}

// TestSignalValid: every signal of a golden sample passes the policy
// engine's validation, whatever bytes the user field held.
func TestSignalFields(t *testing.T) {
	set, err := Builtin()
	if err != nil {
		t.Fatal(err)
	}
	user := "\xff\xfe" + strings.Repeat("é", 200)
	r := set.Get("sshd").Match(Line{Text: "Invalid user " + user + " from 203.0.113.9 port 22", Source: "journal", Journal: true, Unit: "ssh.service", Identifier: "sshd"})
	if r.Outcome != Matched {
		t.Fatalf("outcome %v", r.Outcome)
	}
	if err := validate(r.Signal); err != nil {
		t.Fatal(err)
	}
	if len(r.Signal.User) > 256 || r.Signal.Attrs["unit"] != "ssh.service" || r.Signal.Attrs["identifier"] != "sshd" || r.Signal.Attrs["source"] != "journal" {
		t.Errorf("signal %+v", r.Signal)
	}
}

// TestBuiltinsRequireUnit: a built-in detector that reads the journal
// requires the unit journald sets, not only the identifier any local user
// can choose (logger -t sshd).
func TestBuiltinsRequireUnit(t *testing.T) {
	set, err := Builtin()
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range set.Detectors() {
		if s := d.Sources(); len(s.Identifiers) > 0 && len(s.Units) == 0 {
			t.Errorf("%s: identifiers %v without units", d.Name(), s.Identifiers)
		}
	}
}
