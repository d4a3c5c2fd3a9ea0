package sshlab_test

import (
	"bufio"
	"encoding/json"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/parryhq/parry/test/sshlab"
)

var kinds = []string{
	"accepted-publickey", "banner-probe", "banner-probe-injection", "failed-password", "identification-then-close",
	"invalid-user", "invalid-user-injection", "kex-probe", "silent-probe", "too-many-auth-failures",
}

// The recorded .log samples parse, hold every attempt kind, and each block
// is what its header says: the client's address in it, the injected user
// name logged as sent (up to the ':' at which sshd cuts a user name).
func TestSamplesLog(t *testing.T) {
	for _, name := range []string{"openssh-9.2.log", "openssh-9.2.info.log"} {
		t.Run(name, func(t *testing.T) {
			f, err := sshlab.Samples.Open("testdata/" + name)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			samples, err := sshlab.ParseSamples(f)
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, s := range samples {
				if !slices.Contains(got, s.Kind) {
					got = append(got, s.Kind)
				}
				all := strings.Join(s.Lines, "\n")
				if len(s.Lines) == 0 {
					t.Errorf("%s (%s): no lines", s.Kind, s.Note)
				}
				if !strings.Contains(all, s.Client.String()+" port ") {
					t.Errorf("%s (%s): no line names the client %s:\n%s", s.Kind, s.Note, s.Client, all)
				}
				if strings.HasSuffix(s.Kind, "-injection") && s.User != "" {
					sent, _, _ := strings.Cut(s.User, ":")
					if !strings.Contains(all, "user "+sent+" from "+s.Client.String()) {
						t.Errorf("%s: user %q not logged as sent:\n%s", s.Kind, s.User, all)
					}
				}
				if !s.Attack && strings.Contains(all, "Failed") {
					t.Errorf("%s: a negative sample with a failure:\n%s", s.Kind, all)
				}
			}
			slices.Sort(got)
			if !slices.Equal(got, kinds) {
				t.Errorf("kinds %q, want %q", got, kinds)
			}
		})
	}
}

// The journal sample is journalctl's JSON, one entry per line, with the
// fields a journal source selects and reads, and sshd entries that journald
// could not attribute to ssh.service.
func TestSamplesJournal(t *testing.T) {
	f, err := sshlab.Samples.Open("testdata/openssh-9.2.journal.json")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	ids := map[string]int{}
	var messages []string
	noUnit := 0 // sshd entries journald could not attribute to ssh.service
	for sc.Scan() {
		var e map[string]string
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			t.Fatalf("%q: %v", sc.Text(), err)
		}
		for _, k := range []string{"MESSAGE", "SYSLOG_IDENTIFIER", "__CURSOR", "__REALTIME_TIMESTAMP", "_PID"} {
			if e[k] == "" {
				t.Errorf("entry without %s: %q", k, sc.Text())
			}
		}
		ids[e["SYSLOG_IDENTIFIER"]]++
		if e["SYSLOG_IDENTIFIER"] == "sshd" {
			messages = append(messages, e["MESSAGE"])
			if e["_SYSTEMD_UNIT"] == "" {
				noUnit++
			}
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	if ids["sshd"] == 0 || ids["sshlab-attempt"] == 0 {
		t.Errorf("entries per SYSLOG_IDENTIFIER: %v", ids)
	}
	// The sample keeps journald's race (README.md): a journal reader must
	// not depend on _SYSTEMD_UNIT being there.
	if noUnit == 0 {
		t.Errorf("no sshd entry without _SYSTEMD_UNIT: the sample no longer shows the race")
	}
	for _, want := range []string{
		`^Failed password for invalid user x from 6\.6\.6\.6 from 192\.0\.2\.2 port \d+ ssh2$`,
		`^pam_unix\(sshd:auth\): authentication failure; .* rhost=192\.0\.2\.2 `,
		`^Accepted publickey for root from 192\.0\.2\.2 port \d+ ssh2: `,
	} {
		re := regexp.MustCompile(want)
		if !slices.ContainsFunc(messages, re.MatchString) {
			t.Errorf("no sshd MESSAGE matches %s", want)
		}
	}
}
