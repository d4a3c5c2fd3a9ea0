package boot

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/parryhq/parry/test/netns"
)

var (
	debOnce sync.Once
	debPath string
	debErr  error
)

// buildDeb runs `make deb` once per test binary and returns the package.
func buildDeb(t *testing.T) string {
	t.Helper()
	requireTools(t, map[string]string{"make": "make", "git": "git"})
	root := repoRoot(t)
	for _, main := range []string{"cmd/parryd", "cmd/parry"} {
		if _, err := os.Stat(filepath.Join(root, main)); err != nil {
			t.Skipf("skipping: %s is not on this branch yet, there is nothing to package", main)
		}
	}
	debOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, "packaging/version.sh")
		cmd.Dir = root
		v, err := cmd.Output()
		if err != nil {
			debErr = fmt.Errorf("packaging/version.sh: %w", err)
			return
		}
		version := strings.TrimSpace(string(v))
		cmd = exec.CommandContext(ctx, "go", "env", "GOARCH")
		arch, err := cmd.Output()
		if err != nil {
			debErr = fmt.Errorf("go env GOARCH: %w", err)
			return
		}
		cmd = exec.CommandContext(ctx, "make", "deb", "VERSION="+version)
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			debErr = fmt.Errorf("make deb: %w\n%s", err, tail(string(out), 40))
			return
		}
		debPath = filepath.Join(root, "packaging", "dist", fmt.Sprintf("parry_%s_%s.deb", version, strings.TrimSpace(string(arch))))
		if _, err := os.Stat(debPath); err != nil {
			debErr = fmt.Errorf("make deb did not produce %s: %w", debPath, err)
		}
	})
	if debErr != nil {
		t.Fatal(debErr)
	}
	return debPath
}

// TestLintian lints the .deb: errors fail, warnings are logged (each one is
// explained in docs/install.md).
func TestLintian(t *testing.T) {
	requireTools(t, map[string]string{"lintian": "lintian"})
	if testing.Short() {
		t.Skip("-short: building the package takes a while")
	}
	deb := buildDeb(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, "lintian", "--fail-on", "error", "--info", "--display-info", "--pedantic", deb).CombinedOutput()
	var tags []string
	for _, line := range strings.Split(string(out), "\n") {
		if len(line) > 2 && strings.Contains("EWIPX", line[:1]) && line[1] == ':' {
			tags = append(tags, line)
		}
	}
	t.Logf("lintian %s:\n%s", filepath.Base(deb), strings.Join(tags, "\n"))
	if err != nil {
		t.Fatalf("lintian reports errors: %v\n%s", err, out)
	}
}

const tcpPort = 8022

// TestBoot installs the package in a booted Debian 12 and drives the
// service as an admin would: the steps of docs/install.md, then crash,
// hang, upgrade and purge.
func TestBoot(t *testing.T) {
	netns.RequireRoot(t)
	requireTools(t, map[string]string{
		"debootstrap": "debootstrap", "systemd-nspawn": "systemd-container",
		"nsenter": "util-linux", "socat": "socat", "ping": "iputils-ping", "tar": "tar",
	})
	if testing.Short() {
		t.Skip("-short: the boot test takes minutes")
	}
	deb := buildDeb(t)
	root := rootFS(t)
	pair := netns.NewPair(t)
	pair.Host.ServeTCP(t, tcpPort)
	if !reachable(pair) {
		t.Fatal("the peer cannot reach the host before parry is installed: test network broken")
	}
	start := time.Now()
	c := boot(t, machine{root: root, upper: t.TempDir(), ns: pair.Host, hostDir: filepath.Dir(deb)})
	t.Logf("booted in %v", time.Since(start).Round(100*time.Millisecond))
	pkg := "/parry-pkg/" + filepath.Base(deb)
	peer := pair.PeerV4.String()

	// Install exactly as docs/install.md says.
	c.must("apt", "install", "-y", pkg)
	c.waitActive("after install", 0)
	if s := c.show("StatusText"); s == "" {
		t.Errorf("parryd sent no STATUS= line after READY=1")
	} else {
		t.Logf("status after start: %s", s)
	}
	if out := c.must("stat", "-c", "%a %U %G", "/run/parry/parry.sock"); strings.TrimSpace(out) != "660 root parry" {
		t.Errorf("control socket mode/owner = %q, want 660 root parry", out)
	}
	if out := c.must("systemd-analyze", "verify", "--man=no", "parry.service", "parry.socket"); strings.TrimSpace(out) != "" {
		t.Errorf("systemd-analyze verify on the installed units:\n%s", out)
	}
	// The next boot's transaction, parry included, has no ordering cycle.
	if out := c.must("systemd-analyze", "verify", "--man=no", "default.target"); strings.Contains(out, "cycle") {
		t.Errorf("ordering cycle in the boot transaction with parry enabled:\n%s", out)
	}

	c.checkVerifyPackages()

	// Block the peer: packets from it are dropped, and the journal has it.
	c.must("parry", "block", peer, "--for", "1h", "--reason", "boot test")
	if reachable(pair) {
		t.Fatalf("peer %s still reaches the host after parry block\n%s", peer, c.journal())
	}
	if !poll(10*time.Second, func() bool { return c.journalHas(peer, "-u", "parry", "PARRY_ACTION=block") }) {
		t.Errorf("no journal entry with PARRY_ACTION=block for %s (journalctl -u parry PARRY_ACTION=block)\n%s", peer, c.diagnostics())
	}

	c.checkRestart(pair, "systemctl restart parry", func() { c.must("systemctl", "restart", "parry") })
	c.checkRestart(pair, "systemctl restart nftables (flushes the ruleset; PartOf restarts parry)",
		func() { c.must("systemctl", "restart", "nftables") })
	c.checkRestart(pair, "SIGKILL (Restart=on-failure)", func() { c.must("kill", "-KILL", c.show("MainPID")) })
	c.checkRestart(pair, "SIGSTOP (watchdog)", func() { c.must("kill", "-STOP", c.show("MainPID")) })
	if !c.journalHas("Watchdog timeout", "-u", "parry") {
		t.Errorf("no 'Watchdog timeout' from systemd in parry's journal\n%s", c.journal())
	}
	c.checkReload()
	// Upgrades and reboots keep the blocks and the lockdown.
	c.must("parry", "lockdown", "--for", "30m", "--allow", "198.51.100.7", "--reason", "boot test")
	c.checkRestart(pair, "upgrade (dpkg -i of the package again)", func() { c.must("dpkg", "-i", pkg) })
	c.checkKept("upgrade", peer)

	// Reboot: parryd starts at boot before network-pre.target, from the
	// store, with the block in place.
	c = c.reboot()
	c.waitActive("after reboot", 0)
	if reachable(pair) {
		t.Errorf("peer reaches the host after a reboot\n%s", c.diagnostics())
	}
	c.checkKept("reboot", peer)
	c.must("parry", "release")
	var parryUp, netPre int64
	fmt.Sscan(c.show("ActiveEnterTimestampMonotonic"), &parryUp)
	fmt.Sscan(strings.TrimSpace(c.must("systemctl", "show", "-p", "ActiveEnterTimestampMonotonic", "--value", "network-pre.target")), &netPre)
	t.Logf("rebooted: parry.service active at %.3f s, network-pre.target at %.3f s (monotonic clock)", float64(parryUp)/1e6, float64(netPre)/1e6)
	if parryUp == 0 || netPre == 0 || parryUp > netPre {
		t.Errorf("parry.service active at %d µs, network-pre.target at %d µs: parry must come first", parryUp, netPre)
	}

	// Purge: service, table and state are gone; the peer gets through again.
	c.must("dpkg", "--purge", "parry")
	if out, err := c.run("nft", "list", "table", "inet", "parry"); err == nil {
		t.Errorf("table inet parry still there after purge:\n%s", out)
	}
	if out, err := c.run("ls", "-A", "/var/lib/parry"); err == nil {
		t.Errorf("/var/lib/parry still there after purge: %s", out)
	}
	if out, _ := c.run("systemctl", "is-active", "parry"); strings.TrimSpace(out) == "active" {
		t.Errorf("parry still active after purge")
	}
	if !reachable(pair) {
		t.Errorf("peer still blocked after purge")
	}
	c.poweroff()
	t.Logf("whole boot test: %v", time.Since(start).Round(time.Second))
}

// reachable reports whether the peer reaches the host by ping or TCP.
func reachable(p *netns.Pair) bool {
	return p.Peer.Ping(p.HostV4) || p.Peer.CanConnect(p.HostV4, tcpPort)
}

// show returns one property of parry.service.
func (c *container) show(prop string) string {
	c.t.Helper()
	return strings.TrimSpace(c.must("systemctl", "show", "-p", prop, "--value", "parry.service"))
}

// waitActive waits until parry.service is active (for Type=notify: READY=1
// was sent) with a main pid other than oldPID, and returns that pid.
func (c *container) waitActive(what string, oldPID int) int {
	c.t.Helper()
	pid := 0
	c.eventually(60*time.Second, "parry.service active with a new main pid "+what, func() bool {
		out, _ := c.run("systemctl", "show", "-p", "ActiveState,SubState,MainPID", "parry.service")
		var state, sub string
		for _, line := range strings.Split(out, "\n") {
			k, v, _ := strings.Cut(line, "=")
			switch k {
			case "ActiveState":
				state = v
			case "SubState":
				sub = v
			case "MainPID":
				fmt.Sscan(v, &pid)
			}
		}
		return state == "active" && sub == "running" && pid != 0 && pid != oldPID
	})
	return pid
}

// checkRestart does something that restarts parryd and checks that the
// service comes back with a new process and the block still enforced.
func (c *container) checkRestart(pair *netns.Pair, what string, do func()) {
	c.t.Helper()
	var old int
	fmt.Sscan(c.show("MainPID"), &old)
	before := time.Now()
	do()
	c.waitActive("after "+what, old)
	c.eventually(10*time.Second, "block enforced after "+what, func() bool { return !reachable(pair) })
	c.t.Logf("%s: back and enforcing in %v", what, time.Since(before).Round(100*time.Millisecond))
}

// checkReload: a valid config reloads in place; an invalid one is refused
// and the daemon keeps running on the old one.
func (c *container) checkReload() {
	c.t.Helper()
	pid := c.show("MainPID")
	if out, err := c.run("systemctl", "reload", "parry"); err != nil {
		c.t.Errorf("systemctl reload parry with the shipped config failed: %v\n%s\n%s", err, out, c.diagnostics())
	}
	c.must("cp", "/etc/parry/parry.yaml", "/root/parry.yaml.orig")
	c.must("sh", "-c", "echo 'no_such_setting: 1' >> /etc/parry/parry.yaml")
	if out, err := c.run("systemctl", "reload", "parry"); err == nil {
		c.t.Errorf("reload with an unknown config key succeeded:\n%s", out)
	}
	if got := c.show("MainPID"); got != pid || c.show("ActiveState") != "active" {
		c.t.Errorf("after refused reload: MainPID %s (was %s), state %s", got, pid, c.show("ActiveState"))
	}
	c.must("mv", "/root/parry.yaml.orig", "/etc/parry/parry.yaml")
}

// checkKept checks that the block of peer and the lockdown are still there.
func (c *container) checkKept(after, peer string) {
	c.t.Helper()
	if out := c.must("parry", "list"); !strings.Contains(out, peer) {
		c.t.Errorf("parry list after %s does not show %s:\n%s", after, peer, out)
	}
	var st struct {
		Lockdown struct {
			Active bool   `json:"active"`
			Reason string `json:"reason"`
		} `json:"lockdown"`
	}
	out := c.must("parry", "status", "--json")
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		c.t.Fatalf("parry status --json: %v\n%s", err, out)
	}
	if !st.Lockdown.Active || st.Lockdown.Reason != "boot test" {
		c.t.Errorf("lockdown not kept across %s: %s", after, out)
	}
}

// journalHas reports whether journalctl with args has an entry whose JSON
// contains want.
func (c *container) journalHas(want string, args ...string) bool {
	out, err := c.run("journalctl", append([]string{"--no-pager", "-o", "json"}, args...)...)
	if err != nil {
		return false
	}
	for _, line := range strings.Split(out, "\n") {
		var e map[string]any
		if json.Unmarshal([]byte(line), &e) == nil && strings.Contains(line, want) {
			return true
		}
	}
	return false
}
