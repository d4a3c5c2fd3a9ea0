package boot

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/parryhq/parry/test/netns"
)

// The root file system the boot test boots: Debian 12, minimal, with what
// parry and the test need. adduser and procps are the package's Depends:
// the container has no network to fetch them.
const (
	suite    = "bookworm"
	cacheDir = "/var/cache/parry-test"
)

var includes = []string{"systemd", "systemd-sysv", "dbus", "nftables", "iproute2", "iputils-ping", "adduser", "procps"}

// requireTools skips (or, under CI, fails) when a tool the boot test needs
// is missing, naming the Debian package that has it.
func requireTools(t *testing.T, tools map[string]string) {
	t.Helper()
	var missing []string
	for tool, pkg := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			missing = append(missing, fmt.Sprintf("%s (apt-get install -y %s)", tool, pkg))
		}
	}
	if len(missing) == 0 {
		return
	}
	if os.Getenv("CI") != "" {
		t.Fatalf("boot test needs %s; CI must install them", strings.Join(missing, ", "))
	}
	t.Skipf("skipping: boot test needs %s", strings.Join(missing, ", "))
}

// aptMirror returns the Debian mirror apt is configured with (deb822
// .sources or one-line sources.list), so debootstrap uses the same one.
// PARRY_TEST_MIRROR overrides it.
func aptMirror() string {
	if m := os.Getenv("PARRY_TEST_MIRROR"); m != "" {
		return m
	}
	files, _ := filepath.Glob("/etc/apt/sources.list.d/*.sources")
	files = append(files, "/etc/apt/sources.list")
	more, _ := filepath.Glob("/etc/apt/sources.list.d/*.list")
	files = append(files, more...)
	for _, f := range files {
		if m := mirrorIn(f); m != "" {
			return m
		}
	}
	return "http://deb.debian.org/debian"
}

// mirrorIn finds a URI that serves suite "bookworm" (not -security or
// -updates) in one apt sources file.
func mirrorIn(path string) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	var uris, suites []string
	flush := func() string {
		defer func() { uris, suites = nil, nil }()
		for _, s := range suites {
			if s == suite && len(uris) > 0 {
				return uris[0]
			}
		}
		return ""
	}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		fields := strings.Fields(line)
		switch {
		case line == "":
			if m := flush(); m != "" {
				return m
			}
		case strings.HasPrefix(line, "URIs:"):
			uris = fields[1:]
		case strings.HasPrefix(line, "Suites:"):
			suites = fields[1:]
		case len(fields) >= 3 && fields[0] == "deb":
			// deb [opts] URI suite components
			i := 1
			if strings.HasPrefix(fields[1], "[") {
				for i < len(fields) && !strings.HasSuffix(fields[i], "]") {
					i++
				}
				i++
			}
			if i+1 < len(fields) && fields[i+1] == suite {
				return fields[i]
			}
		}
	}
	return flush()
}

// rootFS returns a directory holding a pristine Debian 12 root file system,
// made by debootstrap once and cached as a tarball (and its unpacked tree)
// under /var/cache/parry-test. The tree is only ever booted under a
// volatile overlay, so it stays clean.
func rootFS(t *testing.T) string {
	t.Helper()
	mirror := aptMirror()
	sum := sha256.Sum256([]byte(suite + " " + strings.Join(includes, ",") + " " + mirror))
	base := filepath.Join(cacheDir, "debian12-minbase-"+hex.EncodeToString(sum[:6]))
	tarball, dir, done := base+".tar", base, base+".ok"
	if err := os.MkdirAll(cacheDir, 0o755); err != nil {
		t.Fatal(err)
	}
	lock, err := os.OpenFile(filepath.Join(cacheDir, ".lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		t.Fatalf("lock %s: %v", cacheDir, err)
	}
	defer syscall.Flock(int(lock.Fd()), syscall.LOCK_UN) //nolint:errcheck

	if _, err := os.Stat(done); err == nil {
		return dir
	}
	start := time.Now()
	if _, err := os.Stat(tarball); errors.Is(err, os.ErrNotExist) {
		tmp := dir + ".debootstrap"
		mustRun(t, 10*time.Minute, "rm", "-rf", tmp)
		mustRun(t, 10*time.Minute, "debootstrap", "--variant=minbase", "--include="+strings.Join(includes, ","), suite, tmp, mirror)
		mustRun(t, 5*time.Minute, "tar", "-C", tmp, "--numeric-owner", "-cf", tarball+".tmp", ".")
		mustRun(t, time.Minute, "rm", "-rf", tmp)
		if err := os.Rename(tarball+".tmp", tarball); err != nil {
			t.Fatal(err)
		}
		t.Logf("debootstrap %s from %s and cached %s in %v", suite, mirror, tarball, time.Since(start).Round(time.Second))
	}
	mustRun(t, time.Minute, "rm", "-rf", dir)
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	mustRun(t, 5*time.Minute, "tar", "-C", dir, "--numeric-owner", "-xf", tarball)
	if err := os.WriteFile(done, []byte(tarball+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("root file system ready in %s (%v)", dir, time.Since(start).Round(time.Second))
	return dir
}

func mustRun(t *testing.T, timeout time.Duration, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, tail(string(out), 40))
	}
	return string(out)
}

// tail returns the last n lines of s.
func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// machine says what to boot: the cached root (read-only), a directory that
// takes the container's writes (persistent across reboots within the
// test), the network namespace, and a host directory bound read-only at
// /parry-pkg.
type machine struct {
	root, upper string
	ns          *netns.NS
	hostDir     string
}

// container is a Debian system booted by systemd-nspawn in a test network
// namespace.
type container struct {
	t       *testing.T
	m       machine
	nspawn  *exec.Cmd
	exited  chan struct{} // closed when nspawn has exited
	waitErr error
	console string // file with the container's console output
	pid1    int    // the container's systemd, as a host pid
}

// boot starts systemd on an overlay of m.root (writes go to m.upper), inside
// the network namespace m.ns, and waits until the system has finished
// starting up.
func boot(t *testing.T, m machine) *container {
	t.Helper()
	console := filepath.Join(t.TempDir(), "console.log")
	out, err := os.Create(console)
	if err != nil {
		t.Fatal(err)
	}
	// --overlay: the cached tree is the read-only lower layer, so it stays
	// clean as with -x (ephemeral copy), but the container boots in seconds
	// even on a loaded machine, where -x spent over 30 s copying the 260 MB
	// tree, and the upper layer survives a reboot.
	cmd := exec.Command("systemd-nspawn", "-D", m.root, "--overlay="+m.root+":"+m.upper+":/",
		"-b", "--register=no", "--keep-unit", "--console=pipe", "--network-namespace-path="+m.ns.Path,
		// nspawn keeps CAP_NET_ADMIN only for networks it creates itself;
		// this namespace is the test's own, so parryd may manage its firewall.
		"--capability=CAP_NET_ADMIN",
		"--machine="+m.ns.Name, "--bind-ro="+m.hostDir+":/parry-pkg")
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		out.Close()
		t.Fatalf("systemd-nspawn: %v", err)
	}
	c := &container{t: t, m: m, nspawn: cmd, exited: make(chan struct{}), console: console}
	go func() {
		c.waitErr = cmd.Wait()
		out.Close()
		close(c.exited)
	}()
	t.Cleanup(c.kill)

	netns.Eventually(t, 60*time.Second, "the container's systemd to start", func() bool {
		if c.gone() {
			t.Fatalf("systemd-nspawn exited early: %v\n%s", c.waitErr, c.consoleTail())
		}
		c.pid1 = findInit(cmd.Process.Pid)
		return c.pid1 != 0
	})
	var state string
	netns.Eventually(t, 90*time.Second, "the container to finish booting (is-system-running)", func() bool {
		state, _ = c.run("systemctl", "is-system-running")
		state = strings.TrimSpace(state)
		return state == "running" || state == "degraded"
	})
	if state == "degraded" {
		failed, _ := c.run("systemctl", "--failed", "--no-legend")
		t.Logf("container booted degraded; failed units (not parry's):\n%s", failed)
	}
	return c
}

// findInit returns the host pid of the process below parent that is pid 1
// in its own pid namespace: the container's systemd.
func findInit(parent int) int {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return 0
	}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		status, err := os.ReadFile(filepath.Join("/proc", e.Name(), "status"))
		if err != nil {
			continue
		}
		var nspid []string
		ppid := 0
		for _, line := range strings.Split(string(status), "\n") {
			if v, ok := strings.CutPrefix(line, "NSpid:"); ok {
				nspid = strings.Fields(v)
			}
			if v, ok := strings.CutPrefix(line, "PPid:"); ok {
				ppid, _ = strconv.Atoi(strings.TrimSpace(v))
			}
		}
		if len(nspid) >= 2 && nspid[len(nspid)-1] == "1" && descends(ppid, parent) {
			return pid
		}
	}
	return 0
}

// descends reports whether pid is parent or one of its descendants.
func descends(pid, parent int) bool {
	for i := 0; i < 16 && pid > 1; i++ {
		if pid == parent {
			return true
		}
		status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
		if err != nil {
			return false
		}
		next := 0
		for _, line := range strings.Split(string(status), "\n") {
			if v, ok := strings.CutPrefix(line, "PPid:"); ok {
				next, _ = strconv.Atoi(strings.TrimSpace(v))
			}
		}
		pid = next
	}
	return pid == parent
}

// run runs a command inside the container (all its namespaces, its root
// and working directory) and returns its combined output.
func (c *container) run(name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	nsArgs := []string{"-t", strconv.Itoa(c.pid1), "-m", "-p", "-u", "-i", "-n", "-r", "-w", "--", name}
	cmd := exec.CommandContext(ctx, "nsenter", append(nsArgs, args...)...)
	cmd.Env = []string{
		"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
		"LANG=C", "HOME=/root", "DEBIAN_FRONTEND=noninteractive", "SYSTEMD_PAGER=", "TERM=dumb",
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("in container: %s %s: %w: %s", name, strings.Join(args, " "), err, tail(string(out), 30))
	}
	return string(out), nil
}

// poll checks cond every 20 ms until it holds (true) or timeout passes (false).
func poll(timeout time.Duration, cond func() bool) bool {
	return netns.Poll(timeout, 20*time.Millisecond, cond)
}

// eventually polls cond until it holds; on timeout it fails the test with
// parry's status and journal.
func (c *container) eventually(timeout time.Duration, what string, cond func() bool) {
	c.t.Helper()
	if !poll(timeout, cond) {
		c.t.Fatalf("timed out after %v waiting for: %s\n%s", timeout, what, c.diagnostics())
	}
}

// diagnostics returns parry's status and journal, for failure messages.
func (c *container) diagnostics() string {
	status, _ := c.run("systemctl", "status", "--no-pager", "parry.service")
	return "--- systemctl status parry:\n" + status + "\n--- parry journal:\n" + c.journal()
}

// must runs a command inside the container and fails the test on error.
func (c *container) must(name string, args ...string) string {
	c.t.Helper()
	out, err := c.run(name, args...)
	if err != nil {
		c.t.Fatalf("%v\n--- parry journal:\n%s", err, c.journal())
	}
	return out
}

// journal returns the tail of parry's journal, for failure messages.
func (c *container) journal() string {
	out, _ := c.run("journalctl", "-u", "parry", "--no-pager", "-n", "60", "-o", "short-monotonic")
	return out
}

func (c *container) gone() bool {
	select {
	case <-c.exited:
		return true
	default:
		return false
	}
}

func (c *container) consoleTail() string {
	b, _ := os.ReadFile(c.console)
	return tail(string(b), 40)
}

// poweroff shuts the container down from inside and waits for nspawn to
// exit cleanly.
func (c *container) poweroff() {
	c.t.Helper()
	c.shutdown("poweroff", 0)
}

// reboot reboots the container from inside and boots it again from the
// same layers (bare nspawn exits with 133 on reboot instead of restarting).
func (c *container) reboot() *container {
	c.t.Helper()
	c.shutdown("reboot", 133)
	return boot(c.t, c.m)
}

func (c *container) shutdown(verb string, wantExit int) {
	c.t.Helper()
	c.must("systemctl", verb, "--no-block")
	select {
	case <-c.exited:
	case <-time.After(90 * time.Second):
		c.t.Fatalf("container did not %s within 90s\n%s", verb, c.consoleTail())
	}
	if code := c.nspawn.ProcessState.ExitCode(); code != wantExit {
		c.t.Fatalf("systemd-nspawn exited with %v after %s, want exit code %d\n%s", c.waitErr, verb, wantExit, c.consoleTail())
	}
}

// kill stops the nspawn this test started, if it still runs: SIGTERM first
// (nspawn powers the container off), SIGKILL to its process group after 30 s.
func (c *container) kill() {
	if c.gone() {
		return
	}
	_ = c.nspawn.Process.Signal(syscall.SIGTERM)
	select {
	case <-c.exited:
	case <-time.After(30 * time.Second):
		_ = syscall.Kill(-c.nspawn.Process.Pid, syscall.SIGKILL)
		<-c.exited
	}
}
