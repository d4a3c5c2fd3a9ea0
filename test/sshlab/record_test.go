package sshlab_test

import (
	"flag"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/parryhq/parry/test/sshlab"
)

var record = flag.Bool("record", false, "record sshd's log of every attempt kind into testdata/ (see testdata/README.md)")

// attempt is one recorded attempt: what the client did and what a detector
// should make of it.
type attempt struct {
	kind   string // what the client did
	attack bool   // whether a detector should count it against the client
	user   string // user name the client sent, if any
	note   string
	client *sshlab.Client
	do     func(c *sshlab.Client) error
}

// TestRecordSamples runs every attempt kind against a real sshd, at LogLevel
// VERBOSE and INFO, and writes what sshd logged to
// testdata/openssh-<version>[.info].log, one block per attempt under a
// "# attempt" header. It runs only with -record:
//
//	go test -count=1 -run TestRecordSamples ./test/sshlab/ -record
func TestRecordSamples(t *testing.T) {
	if !*record {
		t.Skip("records golden samples only with -record")
	}
	version := debVersion(t, "openssh-server")
	for _, level := range []string{"VERBOSE", "INFO"} {
		name := "openssh-9.2.log"
		if level == "INFO" {
			name = "openssh-9.2.info.log"
		}
		t.Run(level, func(t *testing.T) {
			text := recordLevel(t, level, version)
			path := filepath.Join("testdata", name)
			if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
				t.Fatal(err)
			}
			t.Logf("wrote %s", path)
		})
	}
}

func recordLevel(t *testing.T, level, version string) string {
	lab := sshlab.Start(t, sshlab.Config{LogLevel: level})
	second := netip.MustParseAddr("192.0.2.3")
	lab.AddPeerAddress(t, netip.PrefixFrom(second, 24))
	v4, v6, other := lab.Peer(), lab.PeerV6(), lab.Peer().From(second)
	for _, u := range []string{"admin", "oracle"} {
		if _, err := exec.Command("getent", "passwd", u).Output(); err == nil {
			t.Fatalf("user %q exists on this machine: the invalid-user samples need a name that does not", u)
		}
	}
	fail := func(user string) func(*sshlab.Client) error {
		return func(c *sshlab.Client) error { return c.FailPassword(user) }
	}
	banner := func(line string) func(*sshlab.Client) error {
		return func(c *sshlab.Client) error { return c.BannerProbe(line) }
	}
	tooMany := func(user string) func(*sshlab.Client) error {
		return func(c *sshlab.Client) error { return c.TooManyAuthFailures(user) }
	}
	attempts := []attempt{
		{kind: "failed-password", attack: true, user: "nobody", note: "existing user, wrong password, IPv4", client: v4, do: fail("nobody")},
		{kind: "failed-password", attack: true, user: "nobody", note: "existing user, wrong password, IPv4, second attempt", client: v4, do: fail("nobody")},
		{kind: "failed-password", attack: true, user: "root", note: "root (PermitRootLogin prohibit-password, Debian's default), wrong password", client: v4, do: fail("root")},
		{kind: "failed-password", attack: true, user: "root", note: "root, wrong password, IPv6", client: v6, do: fail("root")},
		{kind: "failed-password", attack: true, user: "nobody", note: "from a second address on the peer's link", client: other, do: fail("nobody")},
		{kind: "invalid-user", attack: true, user: "admin", note: "no such user, password tried", client: v4, do: fail("admin")},
		{kind: "invalid-user", attack: true, user: "oracle", note: "no such user, IPv6", client: v6, do: fail("oracle")},
		{kind: "invalid-user-injection", attack: true, user: sshlab.InjectionUser, note: "user name carries a second 'from <addr>'", client: v4, do: fail(sshlab.InjectionUser)},
		{kind: "invalid-user-injection", attack: true, user: "root from 6.6.6.6 port 22 ssh2", note: "user name carries a whole line tail: only an end anchor finds the client", client: v4, do: fail("root from 6.6.6.6 port 22 ssh2")},
		{kind: "invalid-user-injection", attack: true, user: "x from 2001:db8::66 port 22", note: "sshd cuts a user name at its first ':' (BSD auth style), so no IPv6 address can be injected through it", client: v6, do: fail("x from 2001:db8::66 port 22")},
		{kind: "too-many-auth-failures", attack: true, user: "nobody", note: "seven unknown keys, MaxAuthTries 6", client: v4, do: tooMany("nobody")},
		{kind: "too-many-auth-failures", attack: true, user: "admin", note: "seven unknown keys for a user that does not exist", client: v4, do: tooMany("admin")},
		{kind: "kex-probe", attack: true, note: "client offers only diffie-hellman-group14-sha1", client: v4, do: func(c *sshlab.Client) error { return c.KexProbe() }},
		{kind: "banner-probe", attack: true, note: "an HTTP request on the ssh port", client: v4, do: banner("GET / HTTP/1.1")},
		{kind: "banner-probe-injection", attack: true, note: "banner text carries 'from <addr> port'", client: v4, do: banner("x from 6.6.6.6 port 22")},
		{kind: "silent-probe", attack: true, note: "connect and close without a word", client: v4, do: banner("")},
		{kind: "identification-then-close", attack: true, note: "a valid SSH identification, then close", client: v4, do: banner("SSH-2.0-x from 6.6.6.6 port 22")},
		{kind: "accepted-publickey", attack: false, user: sshlab.KeyUser, note: "negative: the authorized key logs in (the session then fails: nologin)", client: v4, do: func(c *sshlab.Client) error { return c.KeyLogin() }},
	}

	var b strings.Builder
	fmt.Fprintf(&b, "# sshd of Debian openssh-server %s (OpenSSH 9.2p1), LogLevel %s, UsePAM yes,\n", version, level)
	fmt.Fprintf(&b, "# run as `sshd -D -e -E <file>` by test/sshlab: messages as sshd writes them, without syslog prefix\n")
	fmt.Fprintf(&b, "# (sshd -e ends lines with \\r\\n; the \\r is removed here). PAM's own lines go to syslog, not here.\n")
	fmt.Fprintf(&b, "# Server %s and %s port %d; clients %s, %s and %s. Made by:\n", lab.Pair.HostV4, lab.Pair.HostV6, lab.Port, lab.Pair.PeerV4, lab.Pair.PeerV6, second)
	fmt.Fprintf(&b, "#   go test -count=1 -run TestRecordSamples ./test/sshlab/ -record\n")
	fmt.Fprintf(&b, "# Each block follows a header: # attempt kind=K attack=yes|no client=ADDR user=\"U\" note=\"...\"\n")
	fmt.Fprintf(&b, "# (client is the address a detector must yield for attack=yes, and must never block for attack=no).\n")

	seen := 0
	take := func() []string {
		if err := lab.WaitIdle(wait); err != nil {
			t.Fatal(err)
		}
		lines, err := lab.Lines()
		if err != nil {
			t.Fatal(err)
		}
		got := lines[seen:]
		seen = len(lines)
		return got
	}
	block := func(header string, lines []string) {
		b.WriteString(header + "\n")
		for _, l := range lines {
			b.WriteString(l + "\n")
		}
	}
	block("# startup", take())
	for _, a := range attempts {
		if err := a.do(a.client); err != nil {
			t.Fatalf("%s (%s): %v", a.kind, a.note, err)
		}
		lines := take()
		if len(lines) == 0 {
			t.Fatalf("%s (%s): sshd logged nothing", a.kind, a.note)
		}
		from := a.client.Bind
		if !from.IsValid() {
			from = lab.Pair.PeerV4
			if a.client.Server.Is6() {
				from = lab.Pair.PeerV6
			}
		}
		yn := map[bool]string{true: "yes", false: "no"}[a.attack]
		block(fmt.Sprintf("# attempt kind=%s attack=%s client=%s user=%q note=%q", a.kind, yn, from, a.user, a.note), lines)
	}
	if err := lab.Stop(); err != nil {
		t.Fatal(err)
	}
	lines, err := lab.Lines()
	if err != nil {
		t.Fatal(err)
	}
	block("# shutdown", lines[seen:])
	return b.String()
}

// debVersion returns the installed version of a Debian package.
func debVersion(t *testing.T, pkg string) string {
	out, err := exec.Command("dpkg-query", "-W", "-f", "${Version}", pkg).Output()
	if err != nil {
		t.Fatalf("dpkg-query %s: %v", pkg, err)
	}
	return strings.TrimSpace(string(out))
}
