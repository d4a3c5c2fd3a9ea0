package boot

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/parryhq/parry/test/netns"
	"github.com/parryhq/parry/test/sshlab"
)

var recordSSHJournal = flag.Bool("record-ssh-journal", false,
	"record OpenSSH's journal entries (and rsyslog's auth.log) in the booted Debian into test/sshlab/testdata/")

// sshDebs are the packages OpenSSH's server and rsyslog need on top of the
// boot test's root file system; apt-get download fetches them from the
// host's mirror (the container has no network), dpkg installs them inside.
var sshDebs = []string{
	"openssh-server", "openssh-client", "openssh-sftp-server", "libfido2-1", "libcbor0.8", "libwrap0",
	"libnsl2", "lsb-base", "runit-helper", "ucf", "sensible-utils",
	"rsyslog", "libestr0", "libfastjson4", "liblognorm5",
}

// TestRecordSSHJournal boots the Debian of the boot test, installs Debian's
// openssh-server (which starts ssh.service with Debian's default config,
// logging to the real journald) and rsyslog, makes the attempts of
// test/sshlab against it from the peer namespace, and writes what the
// journal holds (journalctl -o json) and what rsyslog wrote to
// /var/log/auth.log into test/sshlab/testdata/. Each attempt is preceded by
// a marker entry (SYSLOG_IDENTIFIER=sshlab-attempt) that says what it was.
// It runs only with -record-ssh-journal:
//
//	nice go test -count=1 -run TestRecordSSHJournal ./test/boot/ -record-ssh-journal
func TestRecordSSHJournal(t *testing.T) {
	if !*recordSSHJournal {
		t.Skip("records the journal samples only with -record-ssh-journal")
	}
	sshlab.Require(t)
	requireTools(t, map[string]string{"debootstrap": "debootstrap", "systemd-nspawn": "systemd-container", "nsenter": "util-linux", "apt-get": "apt"})
	root := rootFS(t)
	pkgDir, debs := downloadSSH(t)
	key := filepath.Join(t.TempDir(), "root_ed25519")
	mustRun(t, time.Minute, "ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "parry-sshlab", "-f", key)
	pub, err := os.ReadFile(key + ".pub")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(pkgDir, "authorized_keys"), pub, 0o644); err != nil {
		t.Fatal(err)
	}

	pair := netns.NewPair(t)
	c := boot(t, machine{root: root, upper: t.TempDir(), ns: pair.Host, hostDir: pkgDir})
	c.installSSH(debs)
	c.must("install", "-D", "-m", "0600", "/parry-pkg/authorized_keys", "/root/.ssh/authorized_keys")
	version := strings.TrimSpace(c.must("dpkg-query", "-W", "-f", "${Version}", "openssh-server"))

	v4 := sshlab.NewClient(t, pair.Peer, pair.HostV4, 22)
	v6 := sshlab.NewClient(t, pair.Peer, pair.HostV6, 22)
	fail := func(user string) func(*sshlab.Client) error {
		return func(cl *sshlab.Client) error { return cl.FailPassword(user) }
	}
	attempts := []struct {
		kind, user, note string
		attack           bool
		client           *sshlab.Client
		do               func(*sshlab.Client) error
	}{
		{"failed-password", "nobody", "existing user, wrong password", true, v4, fail("nobody")},
		{"failed-password", "root", "root (PermitRootLogin prohibit-password), wrong password", true, v4, fail("root")},
		{"failed-password", "root", "root, wrong password, IPv6", true, v6, fail("root")},
		{"invalid-user", "admin", "no such user", true, v4, fail("admin")},
		{"invalid-user-injection", sshlab.InjectionUser, "user name carries a second 'from <addr>'", true, v4, fail(sshlab.InjectionUser)},
		{"invalid-user-injection", "root from 6.6.6.6 port 22 ssh2", "user name carries a whole line tail", true, v4, fail("root from 6.6.6.6 port 22 ssh2")},
		{"too-many-auth-failures", "nobody", "seven unknown keys, MaxAuthTries 6", true, v4, func(cl *sshlab.Client) error { return cl.TooManyAuthFailures("nobody") }},
		{"kex-probe", "", "client offers only diffie-hellman-group14-sha1", true, v4, func(cl *sshlab.Client) error { return cl.KexProbe() }},
		{"banner-probe", "", "an HTTP request on the ssh port", true, v4, func(cl *sshlab.Client) error { return cl.BannerProbe("GET / HTTP/1.1") }},
		{"banner-probe-injection", "", "banner text carries 'from <addr> port'", true, v4, func(cl *sshlab.Client) error { return cl.BannerProbe("x from 6.6.6.6 port 22") }},
		{"silent-probe", "", "connect and close without a word", true, v4, func(cl *sshlab.Client) error { return cl.BannerProbe("") }},
		{"identification-then-close", "", "a valid SSH identification, then close", true, v4, func(cl *sshlab.Client) error { return cl.BannerProbe("SSH-2.0-x from 6.6.6.6 port 22") }},
		{"accepted-publickey", "root", "negative: the authorized key logs in and runs true", false, v4.WithKey("root", key), func(cl *sshlab.Client) error { return cl.KeyLogin() }},
	}
	idle := c.sshIdle
	for _, a := range attempts {
		from := pair.PeerV4
		if a.client.Server.Is6() {
			from = pair.PeerV6
		}
		yn := map[bool]string{true: "yes", false: "no"}[a.attack]
		c.must("logger", "-p", "auth.info", "-t", "sshlab-attempt", fmt.Sprintf("kind=%s attack=%s client=%s user=%q note=%q", a.kind, yn, from, a.user, a.note))
		if err := a.do(a.client); err != nil {
			t.Fatalf("%s (%s): %v", a.kind, a.note, err)
		}
		idle(a.kind)
	}
	// A burst of connections whose sshd child logs and exits at once: the
	// entries journald cannot attribute to ssh.service any more (see below)
	// show up most under such load.
	c.must("logger", "-p", "auth.info", "-t", "sshlab-attempt", fmt.Sprintf("kind=silent-probe-burst attack=yes client=%s user=\"\" note=\"20 at once (MaxStartups 10:30:100 may drop some)\"", pair.PeerV4))
	var wg sync.WaitGroup
	errs := make(chan error, 20)
	for range 20 {
		wg.Go(func() { errs <- v4.BannerProbe("") })
	}
	wg.Wait()
	close(errs)
	dropped := 0
	for err := range errs {
		switch {
		case errors.Is(err, sshlab.ErrMaxStartups):
			dropped++
		case err != nil:
			t.Fatalf("burst: %v", err)
		}
	}
	t.Logf("burst: %d of 20 connections dropped past MaxStartups", dropped)
	idle("burst")
	c.must("journalctl", "--sync")
	// Not by unit alone: journald takes _SYSTEMD_UNIT (and _COMM) from
	// /proc of the sender, and a connection child that logs its last line
	// and exits at once has no unit by then. SYSLOG_IDENTIFIER is in the
	// message itself.
	journal := c.must("journalctl", "-o", "json", "--no-pager",
		"SYSLOG_IDENTIFIER=sshd", "+", "_SYSTEMD_UNIT=ssh.service", "+", "UNIT=ssh.service", "+", "SYSLOG_IDENTIFIER=sshlab-attempt")
	var sshd, noUnit int
	for _, line := range strings.Split(strings.TrimSpace(journal), "\n") {
		var e map[string]any
		if err := json.Unmarshal([]byte(line), &e); err != nil {
			t.Fatalf("journalctl -o json printed %q: %v", line, err)
		}
		if e["SYSLOG_IDENTIFIER"] == "sshd" {
			sshd++
			if _, ok := e["_SYSTEMD_UNIT"]; !ok {
				noUnit++
			}
		}
	}
	t.Logf("%d of %d entries of sshd have no _SYSTEMD_UNIT: journalctl -u ssh would miss them", noUnit, sshd)
	authLog := c.must("cat", "/var/log/auth.log")

	dir := filepath.Join(repoRoot(t), "test", "sshlab", "testdata")
	for name, text := range map[string]string{"openssh-9.2.journal.json": journal, "openssh-9.2.auth.log": authLog} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("recorded openssh-server %s: %d journal entries, %d auth.log lines", version, strings.Count(journal, "\n"), strings.Count(authLog, "\n"))
}

// downloadSSH fetches sshDebs with apt-get download into a new directory
// (world-readable, for the container's /parry-pkg) and returns it and the
// packages' paths.
func downloadSSH(t *testing.T) (string, []string) {
	t.Helper()
	pkgDir := t.TempDir()
	if err := os.Chmod(pkgDir, 0o755); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	dl := exec.CommandContext(ctx, "apt-get", append([]string{"download", "-q"}, sshDebs...)...)
	dl.Dir = pkgDir
	if out, err := dl.CombinedOutput(); err != nil {
		t.Fatalf("apt-get download: %v\n%s", err, tail(string(out), 20))
	}
	debs, _ := filepath.Glob(filepath.Join(pkgDir, "*.deb"))
	return pkgDir, debs
}

// installSSH installs the packages of downloadSSH (bound at /parry-pkg)
// with dpkg and waits until ssh.service and rsyslog.service are active:
// Debian's sshd with its default config, logging to the real journald.
func (c *container) installSSH(debs []string) {
	c.t.Helper()
	args := []string{"-i"}
	for _, d := range debs {
		args = append(args, "/parry-pkg/"+filepath.Base(d))
	}
	c.must("dpkg", args...)
	for _, unit := range []string{"ssh.service", "rsyslog.service"} {
		c.eventually(30*time.Second, unit+" active", func() bool {
			out, _ := c.run("systemctl", "is-active", unit)
			return strings.TrimSpace(out) == "active"
		})
	}
}

// sshIdle waits until ssh.service's sshd has no connection child left:
// every attempt made so far has logged its last line.
func (c *container) sshIdle(what string) {
	c.t.Helper()
	mainPID := strings.TrimSpace(c.must("systemctl", "show", "-p", "MainPID", "--value", "ssh.service"))
	c.eventually(30*time.Second, what+": sshd's connections to end", func() bool {
		_, err := c.run("pgrep", "-P", mainPID)
		return err != nil // pgrep exits 1 when sshd has no child
	})
}
