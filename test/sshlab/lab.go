// Package sshlab runs a real OpenSSH server inside a test network namespace
// and real ssh clients in a peer namespace, so that parry's sshd detector and
// its sources are tested against what sshd really logs: failed passwords,
// invalid users, user names carrying injection text, too many authentication
// failures, banner and key-exchange probes, and a successful key login as the
// negative case.
//
// The server is the host's /usr/sbin/sshd (Debian 12: OpenSSH 9.2) with a
// private config and host keys generated into a temporary directory. It
// listens only on the namespace's addresses, logs to a file of its own
// (sshd -D -e -E) and runs as PID 1 of a PID namespace of its own, so that
// stopping it also ends every connection child it forked. Its login
// accounting (btmp, wtmp, lastlog) goes to files of the lab, and PAM's
// syslog lines to /dev/null, through bind mounts in the namespace's own
// mount namespace. Nothing here reads the host's sshd_config, starts the
// host's ssh.service or touches port 22 of the machine's own namespace.
//
// A test starts a lab, makes attempts from the peer and waits for sshd's
// lines:
//
//	lab := sshlab.Start(t, sshlab.Config{})
//	if err := lab.Peer().FailPassword("root"); err != nil {
//		t.Fatal(err)
//	}
//	lines, err := lab.WaitLines("Failed password for root from 192.0.2.2 port ", 1, 30*time.Second)
//
// The recorded samples of every attempt kind are in testdata/ (Samples).
package sshlab

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/parryhq/parry/test/netns"
)

// SSHD is the server binary the lab runs.
const SSHD = "/usr/sbin/sshd"

// KeyUser is the account the lab's client key is authorized for. nobody
// exists on every Debian system and has /usr/sbin/nologin as its shell:
// sshd accepts the key and logs "Accepted publickey for nobody", and the
// session that follows cannot run anything.
const KeyUser = "nobody"

// maxLogBytes bounds what the lab reads of its log file.
const maxLogBytes = 64 << 20

// Config says how to run the lab's sshd. The zero value is a good default.
type Config struct {
	// Pair holds the namespaces: the server runs in Pair.Host and listens on
	// Pair.HostV4 and Pair.HostV6; clients run in Pair.Peer. Nil makes a new
	// pair for the test.
	Pair *netns.Pair
	// Port is the port sshd listens on inside the namespace (default 22:
	// the namespace's own, never the host's).
	Port int
	// LogLevel is sshd's LogLevel: "INFO" (Debian's default) or "VERBOSE"
	// (the default here: every INFO line and more).
	LogLevel string
	// Extra lines appended to the generated sshd_config, such as
	// "MaxAuthTries 3".
	Extra []string
	// LogPath is the file sshd logs to (sshd -E appends to it); empty means
	// sshd.log in the lab's directory. A daemon's file source can read it
	// where its detectors look (such as a test's own auth.log path).
	LogPath string
}

// Lab is one running sshd. Its methods are safe for concurrent use.
type Lab struct {
	Pair    *netns.Pair
	Port    int
	Dir     string // the lab's private directory: config, keys, log
	LogPath string // sshd's log file (sshd -E)
	Config  string // the sshd_config in use

	key    string // client key authorized for KeyUser
	cmd    *exec.Cmd
	kill   context.CancelFunc // SIGKILL to the process group
	exited chan struct{}
	err    error // from cmd.Wait, set before exited is closed

	stopOnce sync.Once
	stopErr  error
	strays   *strays // shared by the lab's clients
}

// Require skips the test, or fails it under CI, when root or a tool the lab
// needs is missing, naming the Debian package that has it.
func Require(t testing.TB) {
	t.Helper()
	netns.RequireRoot(t)
	tools := []struct{ path, pkg string }{
		{SSHD, "openssh-server"}, {"ssh", "openssh-client"}, {"ssh-keygen", "openssh-client"},
		{"sshpass", "sshpass"}, {"socat", "socat"}, {"unshare", "util-linux"},
	}
	var missing []string
	for _, tool := range tools {
		if _, err := exec.LookPath(tool.path); err != nil {
			missing = append(missing, fmt.Sprintf("%s (%s)", tool.path, tool.pkg))
		}
	}
	if len(missing) == 0 {
		return
	}
	msg := fmt.Sprintf("the ssh lab needs %s: run test/ci/deps.sh", strings.Join(missing, ", "))
	if os.Getenv("CI") != "" {
		t.Fatal(msg)
	}
	t.Skip("skipping: " + msg)
}

// Start generates the lab's keys and config, starts sshd in the host
// namespace and waits until it listens. The lab is stopped when the test
// ends.
func Start(t testing.TB, cfg Config) *Lab {
	t.Helper()
	Require(t)
	if cfg.Pair == nil {
		cfg.Pair = netns.NewPair(t)
	}
	if cfg.Port == 0 {
		cfg.Port = 22
	}
	if cfg.LogLevel == "" {
		cfg.LogLevel = "VERBOSE"
	}
	// Not t.TempDir: sshd reads authorized_keys as the user it
	// authenticates (nobody), so the directory must be world-searchable.
	dir, err := os.MkdirTemp("", "parry-sshlab-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	l := &Lab{
		Pair: cfg.Pair, Port: cfg.Port, Dir: dir,
		LogPath: filepath.Join(dir, "sshd.log"), Config: filepath.Join(dir, "sshd_config"),
		key: filepath.Join(dir, "client_ed25519"), exited: make(chan struct{}), strays: &strays{dir: dir},
	}
	if cfg.LogPath != "" {
		l.LogPath = cfg.LogPath
	}
	hostKey := filepath.Join(dir, "ssh_host_ed25519_key")
	for _, k := range []string{hostKey, l.key} {
		if err := keygen(k); err != nil {
			t.Fatal(err)
		}
	}
	pub, err := os.ReadFile(l.key + ".pub")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "authorized_keys"), pub, 0o644); err != nil {
		t.Fatal(err)
	}
	conf, err := l.sshdConfig(cfg, hostKey)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(l.Config, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	// sshd refuses to start without its privilege separation directory,
	// which Debian's unit creates at boot. Create it only if absent.
	if _, err := os.Stat("/run/sshd"); errors.Is(err, os.ErrNotExist) {
		if err := os.Mkdir("/run/sshd", 0o755); err != nil && !errors.Is(err, os.ErrExist) {
			t.Fatal(err)
		}
	}
	if out, err := exec.Command(SSHD, "-t", "-f", l.Config).CombinedOutput(); err != nil {
		t.Fatalf("sshd -t -f %s: %v: %s", l.Config, err, out)
	}
	if err := l.start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := l.Stop(); err != nil {
			t.Errorf("stop the ssh lab: %v", err)
		}
	})
	want := 2 // one line per ListenAddress
	if _, err := l.WaitLines("Server listening on ", want, 15*time.Second); err != nil {
		t.Fatalf("sshd did not start: %v", err)
	}
	return l
}

func (l *Lab) sshdConfig(cfg Config, hostKey string) (string, error) {
	switch cfg.LogLevel {
	case "INFO", "VERBOSE":
	default:
		return "", fmt.Errorf("ssh lab: LogLevel %q: want INFO or VERBOSE", cfg.LogLevel)
	}
	for _, line := range cfg.Extra {
		if strings.ContainsAny(line, "\r\n") {
			return "", fmt.Errorf("ssh lab: extra config line %q holds a line break", line)
		}
	}
	p := l.Pair
	lines := []string{
		"# sshd of parry's test lab (test/sshlab): private keys and log, test namespace only.",
		"# Debian's defaults (UsePAM yes, KbdInteractiveAuthentication no) plus what the lab needs.",
		"ListenAddress " + netip.AddrPortFrom(p.HostV4, uint16(cfg.Port)).String(),
		"ListenAddress " + netip.AddrPortFrom(p.HostV6, uint16(cfg.Port)).String(),
		"HostKey " + hostKey,
		"PidFile " + filepath.Join(l.Dir, "sshd.pid"),
		"LogLevel " + cfg.LogLevel,
		"PasswordAuthentication yes",
		"KbdInteractiveAuthentication no",
		"UsePAM yes",
		"StrictModes no",
		"AuthorizedKeysFile " + filepath.Join(l.Dir, "authorized_keys"),
		"LoginGraceTime 30",
		"PrintMotd no",
		"X11Forwarding no",
	}
	lines = append(lines, cfg.Extra...)
	return strings.Join(lines, "\n") + "\n", nil
}

// accounting is the login accounting sshd writes to: failed logins go to
// btmp (lastb), sessions to wtmp and lastlog.
var accounting = []string{"btmp", "wtmp", "lastlog"}

// private binds a file of the lab's directory over each of the host's
// accounting files that exists, and /dev/null over the host's syslog socket
// (PAM's modules log there, and the host's journal is no place for the
// lab's failures), in the mount namespace `ip netns exec` made (a slave of
// the host's: nothing propagates back); then it execs the rest of its
// arguments. Its only arguments are the lab's own paths.
const private = `d=$1; shift
for f in btmp wtmp lastlog; do
	if [ -e "/var/log/$f" ]; then mount --bind "$d/$f" "/var/log/$f" || exit 1; fi
done
if [ -e /dev/log ]; then mount --bind /dev/null /dev/log || exit 1; fi
exec "$@"`

// start runs sshd in the foreground as PID 1 of a new PID namespace (its
// connection children call setsid, so a process group would not hold them;
// when a PID namespace's first process ends, the kernel kills the rest),
// with the lab's own files in place of the host's login accounting.
func (l *Lab) start() error {
	for _, f := range accounting {
		if err := os.WriteFile(filepath.Join(l.Dir, f), nil, 0o600); err != nil {
			return err
		}
	}
	ctx, kill := context.WithCancel(context.Background())
	l.kill = kill
	l.cmd = l.Pair.Host.Command(ctx, "sh", "-c", private, "sshlab", l.Dir,
		"unshare", "--pid", "--fork", "--kill-child", SSHD, "-D", "-e", "-E", l.LogPath, "-f", l.Config)
	stderr, err := os.Create(filepath.Join(l.Dir, "sshd.stderr"))
	if err != nil {
		kill()
		return err
	}
	l.cmd.Stdout, l.cmd.Stderr = stderr, stderr
	if err := l.cmd.Start(); err != nil {
		stderr.Close()
		kill()
		return fmt.Errorf("start sshd: %w", err)
	}
	go func() {
		l.err = l.cmd.Wait()
		stderr.Close()
		close(l.exited)
	}()
	return nil
}

// Stop ends sshd and every process it forked: SIGTERM to its process group,
// SIGKILL after 10 s. It reports an sshd that had already died, and is safe
// to call more than once.
func (l *Lab) Stop() error {
	l.stopOnce.Do(func() {
		select {
		case <-l.exited:
			l.stopErr = fmt.Errorf("sshd exited before Stop: %v: %s", l.err, l.stderr())
			l.kill()
			return
		default:
		}
		_ = syscall.Kill(-l.cmd.Process.Pid, syscall.SIGTERM)
		select {
		case <-l.exited:
		case <-time.After(10 * time.Second):
			l.stopErr = errors.New("sshd ignored SIGTERM for 10 s; killed")
		}
		l.kill()
		<-l.exited
	})
	return l.stopErr
}

func (l *Lab) stderr() string {
	b, _ := os.ReadFile(filepath.Join(l.Dir, "sshd.stderr"))
	return strings.TrimSpace(string(b))
}

// Running reports whether sshd is still running.
func (l *Lab) Running() bool {
	select {
	case <-l.exited:
		return false
	default:
		return true
	}
}

// Lines returns the complete lines of sshd's log so far, without their line
// ends (sshd -e ends each line with \r\n; a log file written by syslog or
// the journal has no \r).
func (l *Lab) Lines() ([]string, error) {
	f, err := os.Open(l.LogPath)
	if err != nil {
		return nil, fmt.Errorf("ssh lab log: %w", err)
	}
	defer f.Close()
	var buf bytes.Buffer
	if _, err := buf.ReadFrom(io.LimitReader(f, maxLogBytes+1)); err != nil {
		return nil, fmt.Errorf("ssh lab log: %w", err)
	}
	if buf.Len() > maxLogBytes {
		return nil, fmt.Errorf("ssh lab log: over %d bytes", maxLogBytes)
	}
	b := buf.Bytes()
	end := bytes.LastIndexByte(b, '\n')
	if end < 0 {
		return nil, nil
	}
	lines := strings.Split(string(b[:end]), "\n")
	for i, s := range lines {
		lines[i] = strings.TrimSuffix(s, "\r")
	}
	return lines, nil
}

// Matching returns the log lines that contain literal.
func (l *Lab) Matching(literal string) ([]string, error) {
	lines, err := l.Lines()
	if err != nil {
		return nil, err
	}
	var out []string
	for _, s := range lines {
		if strings.Contains(s, literal) {
			out = append(out, s)
		}
	}
	return out, nil
}

// WaitLines polls the log until at least n lines contain literal, and
// returns those lines; after timeout it returns an error holding the log's
// tail.
func (l *Lab) WaitLines(literal string, n int, timeout time.Duration) ([]string, error) {
	var got []string
	var err error
	ok := netns.Poll(timeout, 20*time.Millisecond, func() bool {
		got, err = l.Matching(literal)
		return err == nil && len(got) >= n
	})
	if ok {
		return got, nil
	}
	if err != nil {
		return nil, err
	}
	return got, fmt.Errorf("after %v, %d of %d lines containing %q in %s; log tail:\n%s", timeout, len(got), n, literal, l.LogPath, l.tail(20))
}

func (l *Lab) tail(n int) string {
	lines, _ := l.Lines()
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	s := strings.Join(lines, "\n")
	if !l.Running() {
		s += fmt.Sprintf("\n(sshd has exited: %v: %s)", l.err, l.stderr())
	}
	return s
}

// WaitIdle waits until sshd has no connection child left: every connection
// has ended and everything it logged is in the log file.
func (l *Lab) WaitIdle(timeout time.Duration) error {
	var n int
	ok := netns.Poll(timeout, 20*time.Millisecond, func() bool {
		n = len(l.sessions())
		return n == 0
	})
	if !ok {
		return fmt.Errorf("ssh lab: %d connections still open after %v", n, timeout)
	}
	return nil
}

// sessions returns the host pids of sshd's children: one per connection.
func (l *Lab) sessions() []int {
	if !l.Running() {
		return nil
	}
	sshd := children(l.cmd.Process.Pid) // unshare's one child: sshd
	if len(sshd) != 1 {
		return nil
	}
	return children(sshd[0])
}

// children lists the children of pid's main thread (sshd is single-threaded).
func children(pid int) []int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", pid, pid))
	if err != nil {
		return nil
	}
	var out []int
	for _, f := range strings.Fields(string(b)) {
		if n, err := strconv.Atoi(f); err == nil {
			out = append(out, n)
		}
	}
	return out
}

// keygen makes a new ed25519 key pair without a passphrase at path.
func keygen(path string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "parry-sshlab", "-f", path).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ssh-keygen %s: %w: %s", path, err, out)
	}
	return nil
}
