package daemon

import (
	"bytes"
	"context"
	"errors"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/parryhq/parry/test/netns"
	"github.com/parryhq/parry/test/parrybin"
)

// User is a throwaway system user for running the CLI unprivileged.
type User struct {
	Name, UID, GID string
}

// NewUser adds a system user (no home, no shell), removed when the test ends.
func NewUser(t testing.TB) *User {
	t.Helper()
	netns.RequireRoot(t)
	name := netns.UniqueName("pt")
	if out, err := exec.Command("useradd", "--system", "--no-create-home", "--user-group", "--shell", "/usr/sbin/nologin", name).CombinedOutput(); err != nil {
		t.Fatalf("useradd %s: %v: %s", name, err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("userdel", name).CombinedOutput(); err != nil {
			t.Errorf("userdel %s: %v: %s", name, err, out)
		}
	})
	id := func(flag string) string {
		out, err := exec.Command("id", flag, name).Output()
		if err != nil {
			t.Fatalf("id %s %s: %v", flag, name, err)
		}
		return strings.TrimSpace(string(out))
	}
	return &User{Name: name, UID: id("-u"), GID: id("-g")}
}

// Parry runs the CLI as root against this daemon (in the test's own
// namespace: it needs only the socket) and returns its output and exit code.
func (d *Daemon) Parry(args ...string) (stdout, stderr string, code int) {
	d.t.Helper()
	return d.cli(nil, nil, args)
}

// ParryIn is Parry with stdin.
func (d *Daemon) ParryIn(stdin []byte, args ...string) (stdout, stderr string, code int) {
	d.t.Helper()
	return d.cli(nil, stdin, args)
}

// ParryAs is Parry run as user u (setpriv, no shell).
func (d *Daemon) ParryAs(u *User, args ...string) (stdout, stderr string, code int) {
	d.t.Helper()
	return d.cli(u, nil, args)
}

// MustParry runs the CLI as root and fails the test unless it exits 0; it
// returns stdout.
func (d *Daemon) MustParry(args ...string) string {
	d.t.Helper()
	out, errOut, code := d.cli(nil, nil, args)
	if code != 0 {
		d.t.Fatalf("parry %s: exit %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), code, out, errOut)
	}
	return out
}

// cliTimeout bounds one CLI run (a block --file of 100,000 addresses
// included).
const cliTimeout = 60 * time.Second

func (d *Daemon) cli(u *User, stdin []byte, args []string) (stdout, stderr string, code int) {
	d.t.Helper()
	_, parry := parrybin.Build(d.t)
	argv := append([]string{parry, "--socket", d.Socket}, args...)
	if u != nil {
		argv = append([]string{"setpriv", "--reuid=" + u.UID, "--regid=" + u.GID, "--init-groups", "--"}, argv...)
	}
	ctx, cancel := context.WithTimeout(context.Background(), cliTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		code = ee.ExitCode() // -1 when killed at the deadline
		if ctx.Err() != nil {
			d.t.Logf("parry %s: killed after %v", strings.Join(args, " "), cliTimeout)
		}
	case err != nil:
		d.t.Fatalf("run parry: %v", err)
	}
	return o.String(), e.String(), code
}
