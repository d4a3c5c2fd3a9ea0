// Package daemon runs parryd as a real process for end-to-end tests: inside
// a network namespace from test/netns (its own nftables), with its own state
// directory and control socket, ready when it says READY=1 on an sd_notify
// socket the way systemd sees it, and stopped with SIGTERM (SIGKILL after a
// deadline). It also runs the parry CLI against it, as root or as another
// user, and reads its audit log.
//
//	d := daemon.New(t, ns, daemon.Options{Config: "integrity:\n  enabled: false\n"})
//	d.Start() // returns once parryd sent READY=1
//	out := d.MustParry("block", "203.0.113.7", "--for", "1h")
//	d.Stop() // SIGTERM; fails the test unless it exits 0
//	msg, code := d.RunOnce("--check-config") // parryd to completion, same files
//
// Whatever is still running when the test ends is stopped, and a failed
// test's log shows parryd's output.
package daemon

import (
	"bytes"
	"context"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/parryhq/parry/test/netns"
	"github.com/parryhq/parry/test/parrybin"
)

// Options say how to run parryd. The zero value is parryd on built-in
// defaults (an empty config file) with table "parry".
type Options struct {
	// Config is the YAML text of the config file, written to ConfigPath and
	// passed with --config, unless Args carry their own ("--config", path). The
	// harness's --state-dir, --socket and --table flags override it.
	Config string
	// Args are more parryd flags, after the harness's own; a repeated flag
	// wins (e.g. "--socket", path).
	Args []string
	// Table is the nftables table (default "parry").
	Table string
	// StateDir is the state directory (default: a new one under t.TempDir(),
	// created by parryd).
	StateDir string
	// Env is added to the test process's environment (after it, so it wins).
	Env []string
	// SocketActivation passes the control socket to parryd as systemd does
	// (created at Socket by the harness, fd 3, LISTEN_FDS=1, LISTEN_FDNAMES=control).
	SocketActivation bool
	// ReadyTimeout bounds the wait for READY=1 (default 30 s).
	ReadyTimeout time.Duration
	// StopTimeout bounds the wait for the exit after SIGTERM (default 10 s).
	StopTimeout time.Duration
}

// Daemon is one parryd, started and stopped as often as a test likes; each
// Start is a new process on the same state directory, socket and config.
type Daemon struct {
	NS         *netns.NS
	StateDir   string // audit.log, store.db, evidence/ ...
	Socket     string // control socket, in a world-traversable directory
	ConfigPath string // the config file written from Options.Config
	Table      string

	t    testing.TB
	opts Options
	rt   string // runtime directory: the sockets
	runs []*run // every process started, the last one current
}

// run is one parryd process.
type run struct {
	cmd    *exec.Cmd
	logs   *parrybin.Buffer
	done   chan struct{} // closed when the process has exited
	notify *net.UnixConn
	msgs   chan string
	ready  time.Duration // exec to READY=1
}

// New prepares (does not start) a parryd in ns. Start runs it.
func New(t testing.TB, ns *netns.NS, opts Options) *Daemon {
	t.Helper()
	if ns == nil {
		// parryd outside a test namespace would change the machine's own firewall.
		t.Fatal("daemon.New: parryd runs only inside a test namespace (netns.New)")
	}
	if opts.Table == "" {
		opts.Table = "parry"
	}
	if opts.ReadyTimeout == 0 {
		opts.ReadyTimeout = 30 * time.Second
	}
	if opts.StopTimeout == 0 {
		opts.StopTimeout = 10 * time.Second
	}
	dir := t.TempDir()
	// A short path (a socket path has at most 107 bytes), traversable by
	// the unprivileged users some tests run the CLI as.
	rt, err := os.MkdirTemp("", "parryd")
	if err == nil {
		err = os.Chmod(rt, 0o755)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(rt) })
	d := &Daemon{NS: ns, StateDir: opts.StateDir, Socket: filepath.Join(rt, "parry.sock"),
		ConfigPath: filepath.Join(dir, "parry.yaml"), Table: opts.Table, t: t, opts: opts, rt: rt}
	if d.StateDir == "" {
		d.StateDir = filepath.Join(dir, "state")
	}
	if !slices.Contains(opts.Args, "--config") {
		// Always a config file: never the host's /etc/parry/parry.yaml.
		d.WriteConfig(opts.Config)
	}
	t.Cleanup(d.cleanup)
	return d
}

// WriteConfig replaces the config file; it takes effect at the next Start or
// on SIGHUP.
func (d *Daemon) WriteConfig(text string) {
	d.t.Helper()
	if err := os.WriteFile(d.ConfigPath, []byte(text), 0o600); err != nil {
		d.t.Fatal(err)
	}
}

func (d *Daemon) args() []string {
	args := []string{"--state-dir", d.StateDir, "--socket", d.Socket, "--table", d.Table}
	if !slices.Contains(d.opts.Args, "--config") {
		args = append(args, "--config", d.ConfigPath)
	}
	return append(args, d.opts.Args...)
}

// Start runs parryd and returns once it has sent READY=1 (after the store
// is re-asserted into the kernel; the control socket is listening by then).
// It fails the test if parryd exits first or is not ready in time.
func (d *Daemon) Start() {
	d.t.Helper()
	if d.Alive() {
		d.t.Fatal("daemon.Start: parryd is already running")
	}
	parryd, _ := parrybin.Build(d.t)
	if prev := d.current(); prev != nil {
		prev.notify.Close() // ends the previous run's Notifications
	}
	r := &run{logs: &parrybin.Buffer{}, done: make(chan struct{}), msgs: make(chan string, 4096)}
	notifyPath := filepath.Join(d.rt, "notify.sock")
	_ = os.Remove(notifyPath)
	var err error
	if r.notify, err = net.ListenUnixgram("unixgram", &net.UnixAddr{Name: notifyPath, Net: "unixgram"}); err != nil {
		d.t.Fatalf("notify socket: %v", err)
	}
	go r.readNotify()
	env := append(os.Environ(), d.opts.Env...)
	env = append(env, "NOTIFY_SOCKET="+notifyPath)
	if d.opts.SocketActivation {
		f := d.activationSocket()
		defer f.Close() // parryd has its own copy once started
		// systemd sets LISTEN_PID to the service's pid; the shell learns it
		// with $$ and execs parryd, which keeps it.
		r.cmd = d.NS.Command(context.Background(), "sh", append([]string{"-c",
			`export LISTEN_PID=$$ LISTEN_FDS=1 LISTEN_FDNAMES=control; exec "$0" "$@"`, parryd}, d.args()...)...)
		r.cmd.ExtraFiles = []*os.File{f}
	} else {
		r.cmd = d.NS.Command(context.Background(), parryd, d.args()...)
	}
	r.cmd.Env = env
	r.cmd.Stdout, r.cmd.Stderr = r.logs, r.logs
	begin := time.Now()
	if err := r.cmd.Start(); err != nil {
		r.notify.Close()
		d.t.Fatalf("start parryd: %v", err)
	}
	d.runs = append(d.runs, r)
	go func() { _ = r.cmd.Wait(); close(r.done) }()
	timeout := time.NewTimer(d.opts.ReadyTimeout)
	defer timeout.Stop()
	for {
		select {
		case m := <-r.msgs:
			if m == "READY=1" {
				r.ready = time.Since(begin)
				return
			}
		case <-r.done:
			d.t.Fatalf("parryd exited (%v) before READY=1:\n%s", r.cmd.ProcessState, tail(r.logs.String()))
		case <-timeout.C:
			d.t.Fatalf("parryd sent no READY=1 within %v:\n%s", d.opts.ReadyTimeout, tail(r.logs.String()))
		}
	}
}

// RunOnce runs parryd to completion on this daemon's files and flags plus
// flags (--check-config, --remove-rules, a start that must fail ...), bounded
// to a minute, and returns its output and exit status.
func (d *Daemon) RunOnce(flags ...string) (output string, code int) {
	d.t.Helper()
	parryd, _ := parrybin.Build(d.t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := d.NS.Command(ctx, parryd, append(d.args(), flags...)...)
	cmd.Env = append(os.Environ(), d.opts.Env...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		code = ee.ExitCode() // -1 when killed at the deadline
	case err != nil:
		d.t.Fatalf("run parryd: %v", err)
	}
	return out.String(), code
}

// activationSocket listens on Socket and returns the listening socket's
// file, for parryd's fd 3.
func (d *Daemon) activationSocket() *os.File {
	d.t.Helper()
	_ = os.Remove(d.Socket)
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: d.Socket, Net: "unix"})
	if err != nil {
		d.t.Fatal(err)
	}
	ln.SetUnlinkOnClose(false)
	f, err := ln.File()
	ln.Close() // f keeps the socket
	if err != nil {
		d.t.Fatal(err)
	}
	return f
}

// readNotify forwards sd_notify assignments, one per message, until the
// socket is closed (at the next Start or the end of the test).
func (r *run) readNotify() {
	defer close(r.msgs)
	buf := make([]byte, 4096)
	for {
		n, err := r.notify.Read(buf)
		if err != nil {
			return
		}
		for _, l := range strings.Split(strings.TrimSpace(string(buf[:n])), "\n") {
			select {
			case r.msgs <- l:
			default: // nobody reads: drop rather than block
			}
		}
	}
}

func (d *Daemon) current() *run {
	if len(d.runs) == 0 {
		return nil
	}
	return d.runs[len(d.runs)-1]
}

// Notifications are the sd_notify assignments ("STATUS=...", "WATCHDOG=1",
// "STOPPING=1") the current process sent after READY=1, in order. The
// channel is closed at the next Start or the end of the test.
func (d *Daemon) Notifications() <-chan string {
	if r := d.current(); r != nil {
		return r.msgs
	}
	return nil
}

// ReadyAfter is how long the last Start took from exec to READY=1.
func (d *Daemon) ReadyAfter() time.Duration {
	if r := d.current(); r != nil {
		return r.ready
	}
	return 0
}

// Stop sends SIGTERM and waits for the exit; it fails the test unless parryd
// exits 0 within the stop timeout (then it is killed).
func (d *Daemon) Stop() {
	d.t.Helper()
	r := d.current()
	if r == nil {
		d.t.Fatal("daemon.Stop: parryd was never started")
	}
	if !r.stop(d.opts.StopTimeout) {
		d.t.Fatalf("parryd did not stop within %v of SIGTERM (killed):\n%s", d.opts.StopTimeout, tail(r.logs.String()))
	}
	if code := r.cmd.ProcessState.ExitCode(); code != 0 {
		d.t.Fatalf("parryd exited %d after SIGTERM:\n%s", code, tail(r.logs.String()))
	}
}

// stop sends SIGTERM, waits up to timeout, then kills; it reports whether
// the process ended before the deadline.
func (r *run) stop(timeout time.Duration) bool {
	select {
	case <-r.done:
		return true
	default:
	}
	_ = r.cmd.Process.Signal(syscall.SIGTERM)
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	select {
	case <-r.done:
		return true
	case <-deadline.C:
		_ = r.cmd.Process.Kill()
		<-r.done
		return false
	}
}

// Kill sends SIGKILL and waits: a crash, for the tests of what survives one.
func (d *Daemon) Kill() {
	d.t.Helper()
	r := d.current()
	if r == nil {
		d.t.Fatal("daemon.Kill: parryd was never started")
	}
	_ = r.cmd.Process.Kill()
	<-r.done
}

// Signal sends sig to the current process (SIGHUP: reload).
func (d *Daemon) Signal(sig os.Signal) {
	d.t.Helper()
	r := d.current()
	if r == nil {
		d.t.Fatal("daemon.Signal: parryd was never started")
	}
	if err := r.cmd.Process.Signal(sig); err != nil {
		d.t.Fatalf("signal parryd: %v", err)
	}
}

var closed = func() chan struct{} { c := make(chan struct{}); close(c); return c }()

// Exited is closed once the current process has exited (at once if none
// was started).
func (d *Daemon) Exited() <-chan struct{} {
	if r := d.current(); r != nil {
		return r.done
	}
	return closed
}

// Alive reports whether the current process is running.
func (d *Daemon) Alive() bool {
	select {
	case <-d.Exited():
		return false
	default:
		return true
	}
}

// ExitCode is the current process's exit status (-1 if killed by a signal
// or still running).
func (d *Daemon) ExitCode() int {
	if r := d.current(); r != nil && r.cmd.ProcessState != nil && !d.Alive() {
		return r.cmd.ProcessState.ExitCode()
	}
	return -1
}

// PID is the current process's pid (parryd's own: ip netns exec execs it).
func (d *Daemon) PID() int {
	if r := d.current(); r != nil {
		return r.cmd.Process.Pid
	}
	return 0
}

// Log is what the current process wrote to stdout and stderr so far.
func (d *Daemon) Log() string {
	if r := d.current(); r != nil {
		return r.logs.String()
	}
	return ""
}

// cleanup stops what still runs (SIGTERM, SIGKILL after the deadline) and,
// if the test failed, logs every run's output.
func (d *Daemon) cleanup() {
	for _, r := range d.runs {
		r.stop(d.opts.StopTimeout)
		r.notify.Close()
	}
	if d.t.Failed() {
		for i, r := range d.runs {
			d.t.Logf("parryd log (run %d of %d, %v):\n%s", i+1, len(d.runs), r.cmd.ProcessState, tail(r.logs.String()))
		}
	}
}

// tail keeps the end of a long log.
func tail(s string) string {
	const max = 64 << 10
	if len(s) > max {
		return "...\n" + s[len(s)-max:]
	}
	return s
}

// AuditPath is the daemon's audit log.
func (d *Daemon) AuditPath() string { return filepath.Join(d.StateDir, "audit.log") }

// AuditEvents are the fields of every entry of this event in the daemon's
// audit log, in order.
func (d *Daemon) AuditEvents(event string) []map[string]any {
	d.t.Helper()
	return AuditEvents(d.t, d.AuditPath(), event)
}
