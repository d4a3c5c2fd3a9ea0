package boot

import (
	"encoding/json"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/parryhq/parry/test/netns"
	"github.com/parryhq/parry/test/sshlab"
)

var bootSSH = flag.Bool("boot-ssh", false,
	"run TestBootSSH: boot Debian with OpenSSH and the .deb, failed ssh logins must block (fails today: parryd's journalctl reads no entry in the nspawn container, see TestBootSSH)")

// sshJournalMatch is the journal match of the default source (docs/sources.md,
// "The argument vector is fixed").
var sshJournalMatch = []string{
	"_SYSTEMD_UNIT=ssh.service", "+", "_SYSTEMD_UNIT=sshd.service", "+",
	"SYSLOG_IDENTIFIER=sshd", "+", "SYSLOG_IDENTIFIER=sshd-session",
}

// TestBootSSH installs Debian's OpenSSH and the .deb with its default
// config (no parry.yaml edit) in a booted Debian 12, sshd logging to the
// real journald, and makes real failed password logins from the peer
// namespace: the fifth from an address drops its packets (a second address
// on the same link still connects), and a burst split 3 + 2 by `systemctl
// restart parry` is blocked at the fifth failure exactly, not the fourth.
//
// It runs only with -boot-ssh: today parryd's journalctl (--follow
// --since) reads no entry inside the container. The same command outside
// parry.service's sandbox reads them all; in parryd's mount namespace it
// reads none, and there /proc/sys/kernel/random/boot_id shows the kernel's
// boot id instead of the one systemd-nspawn bind-mounts for the container
// (and journald stamps on every entry). A drop-in with ProtectProc=default
// and ProtectKernelTunables=no did not change it. Its failure message
// prints both counts and both boot ids.
//
//	nice go test -count=1 -run TestBootSSH ./test/boot/ -boot-ssh
func TestBootSSH(t *testing.T) {
	if !*bootSSH {
		t.Skip("runs only with -boot-ssh (parryd's sandboxed journalctl reads no entry in the nspawn container yet)")
	}
	sshlab.Require(t)
	requireTools(t, map[string]string{
		"debootstrap": "debootstrap", "systemd-nspawn": "systemd-container",
		"nsenter": "util-linux", "socat": "socat", "apt-get": "apt",
	})
	if testing.Short() {
		t.Skip("-short: the boot test takes minutes")
	}
	deb := buildDeb(t)
	root := rootFS(t)
	pkgDir, debs := downloadSSH(t)
	data, err := os.ReadFile(deb)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(pkgDir, filepath.Base(deb)), data, 0o644); err != nil {
		t.Fatal(err)
	}
	pair := netns.NewPair(t)
	// .2 (PeerV4) and .4 attack; .3 is an innocent neighbour on the link.
	neighbour, split := netip.MustParseAddr("192.0.2.3"), netip.MustParseAddr("192.0.2.4")
	for _, a := range []netip.Addr{neighbour, split} {
		pair.Peer.MustRun(t, "ip", "addr", "add", netip.PrefixFrom(a, 24).String(), "dev", pair.PeerIf)
	}
	start := time.Now()
	c := boot(t, machine{root: root, upper: t.TempDir(), ns: pair.Host, hostDir: pkgDir})
	c.installSSH(debs)
	c.must("apt", "install", "-y", "/parry-pkg/"+filepath.Base(deb))
	c.waitActive("after install", 0)
	c.eventually(30*time.Second, "the journal source available", func() bool {
		s, ok := c.journalSource()
		return ok && s.Available
	})
	for _, a := range []netip.Addr{pair.PeerV4, neighbour, split} {
		if !canSSH(pair, a) {
			t.Fatalf("%s cannot reach port 22 before any failure: test network broken", a)
		}
	}
	t.Logf("booted, OpenSSH and parry installed in %v", time.Since(start).Round(100*time.Millisecond))

	cl := sshlab.NewClient(t, pair.Peer, pair.HostV4, 22)
	fail := func(from netip.Addr, n int) {
		t.Helper()
		for range n {
			if err := cl.From(from).FailPassword("root"); err != nil {
				t.Fatalf("failed login from %s: %v\n%s", from, err, c.diagnostics())
			}
		}
	}

	// Five failures from the peer: dropped; the neighbour is not.
	fail(pair.PeerV4, 5)
	if !poll(30*time.Second, func() bool { return !canSSH(pair, pair.PeerV4) }) {
		t.Fatalf("%s not dropped 30 s after 5 failed logins\n%s", pair.PeerV4, c.sshDiagnostics())
	}
	if out := c.must("parry", "list"); !strings.Contains(out, pair.PeerV4.String()) {
		t.Errorf("parry list does not show %s:\n%s", pair.PeerV4, out)
	}
	if !canSSH(pair, neighbour) {
		t.Errorf("neighbour %s cannot connect to port 22 after %s was blocked", neighbour, pair.PeerV4)
	}
	t.Logf("5 failures: %s dropped at %v", pair.PeerV4, time.Since(start).Round(100*time.Millisecond))

	// 3 failures, read by parryd; restart; the 4th does not block, the 5th does.
	fail(split, 3)
	c.waitRead("the 3 failures from " + split.String())
	var old int
	fmt.Sscan(c.show("MainPID"), &old)
	c.must("systemctl", "restart", "parry")
	c.waitActive("after restart", old)
	fail(split, 1)
	c.waitRead("the 4th failure from " + split.String())
	if !canSSH(pair, split) {
		t.Fatalf("%s dropped after its 4th failure (3 before the restart, 1 after): want the 5th\n%s", split, c.sshDiagnostics())
	}
	if out := c.must("parry", "list"); strings.Contains(out, split.String()) {
		t.Fatalf("parry list has %s after its 4th failure:\n%s", split, out)
	}
	fail(split, 1)
	if !poll(30*time.Second, func() bool { return !canSSH(pair, split) }) {
		t.Fatalf("%s not dropped 30 s after its 5th failure (3 + restart + 2)\n%s", split, c.sshDiagnostics())
	}
	if out := c.must("parry", "list"); !strings.Contains(out, split.String()) {
		t.Errorf("parry list does not show %s:\n%s", split, out)
	}
	if !canSSH(pair, neighbour) {
		t.Errorf("neighbour %s cannot connect to port 22 at the end", neighbour)
	}
	c.poweroff()
	t.Logf("whole ssh boot test: %v", time.Since(start).Round(time.Second))
}

// canSSH reports whether a TCP connection from the peer namespace, bound
// to from, reaches the host's port 22 within 2 s.
func canSSH(p *netns.Pair, from netip.Addr) bool {
	_, err := p.Peer.Run("socat", "-T2", "/dev/null",
		fmt.Sprintf("TCP:%s,bind=%s,connect-timeout=2", netip.AddrPortFrom(p.HostV4, 22), from))
	return err == nil
}

// sourceStatus is the part of `parry source status --json` the test reads.
type sourceStatus struct {
	Name      string `json:"name"`
	Available bool   `json:"available"`
	Position  struct {
		Cursor string `json:"cursor"`
	} `json:"position"`
}

// journalSource returns the journal source of `parry source status --json`.
func (c *container) journalSource() (sourceStatus, bool) {
	out, err := c.run("parry", "source", "status", "--json")
	if err != nil {
		return sourceStatus{}, false
	}
	var st struct {
		Sources []sourceStatus `json:"sources"`
	}
	if json.Unmarshal([]byte(out), &st) != nil {
		return sourceStatus{}, false
	}
	for _, s := range st.Sources {
		if s.Name == "journal" {
			return s, true
		}
	}
	return sourceStatus{}, false
}

// waitRead waits until sshd has logged everything of the attempts made so
// far and parryd's journal source has read it: the journal holds no entry
// of the source's match after the source's position.
func (c *container) waitRead(what string) {
	c.t.Helper()
	c.sshIdle(what)
	c.must("journalctl", "--sync")
	c.eventually(30*time.Second, "parryd to read "+what, func() bool {
		s, ok := c.journalSource()
		if !ok || s.Position.Cursor == "" {
			return false
		}
		out, err := c.run("journalctl", append([]string{"--no-pager", "-q", "-o", "cat", "--after-cursor=" + s.Position.Cursor}, sshJournalMatch...)...)
		return err == nil && strings.TrimSpace(out) == ""
	})
}

// sshDiagnostics adds parryd's source status and sshd's journal entries to
// diagnostics.
func (c *container) sshDiagnostics() string {
	list, _ := c.run("parry", "list")
	sshd, _ := c.run("journalctl", append([]string{"--no-pager", "-o", "json"}, sshJournalMatch...)...)
	pid := c.show("MainPID")
	kids, _ := c.run("pgrep", "-P", pid, "journalctl")
	var fds string
	for _, k := range strings.Fields(kids) {
		o, _ := c.run("ls", "-l", "/proc/"+k+"/fd")
		st, _ := c.run("grep", "-E", "^(Cap|Uid|Gid|Groups)", "/proc/"+k+"/status")
		w, _ := c.run("cat", "/proc/"+k+"/wchan", "/proc/"+k+"/cmdline")
		fds += "journalctl " + k + ":\n" + o + st + "wchan: " + strings.ReplaceAll(w, "\x00", " ") + "\n"
	}
	// The same journalctl run outside parryd's sandbox, for comparison.
	since := fmt.Sprintf("--since=@%d", time.Now().Add(-15*time.Minute).Unix())
	follow := append([]string{"3", "journalctl", "--follow", "--output=json", "--no-pager", "--quiet", "--no-tail", since}, sshJournalMatch...)
	o, _ := c.run("timeout", follow...)
	fds += fmt.Sprintf("the same journalctl outside the sandbox, 3 s: %d entries\n", strings.Count(o, "\n"))
	o, _ = c.run("nsenter", append([]string{"-t", pid, "-m", "--", "timeout"}, follow...)...)
	fds += fmt.Sprintf("the same journalctl in parryd's mount namespace, 3 s: %d entries\n", strings.Count(o, "\n"))
	b1, _ := c.run("cat", "/proc/sys/kernel/random/boot_id")
	b2, _ := c.run("nsenter", "-t", pid, "-m", "--", "cat", "/proc/sys/kernel/random/boot_id")
	fds += fmt.Sprintf("boot_id: container %s, parryd's mount namespace %s\n", strings.TrimSpace(b1), strings.TrimSpace(b2))
	status, _ := c.run("parry", "source", "status", "--json")
	return fds + c.diagnostics() + "\n--- parry source status --json:\n" + status + "\n--- parry list:\n" + list +
		"\n--- sshd's journal:\n" + tail(sshd, 60)
}
