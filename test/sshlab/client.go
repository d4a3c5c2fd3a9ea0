package sshlab

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/parryhq/parry/test/netns"
)

// WrongPassword is the password every failed login sends.
const WrongPassword = "parry-sshlab-wrong-password"

// InjectionUser is a user name that carries log injection text: sshd logs
// it as the client sent it, so an unanchored pattern reads 6.6.6.6 as the
// client's address.
const InjectionUser = "x from 6.6.6.6"

// ErrMaxStartups is returned by an attempt that sshd turned away before
// the SSH handshake because too many unauthenticated connections were open
// (MaxStartups, 10:30:100 by default): sshd logs "drop connection #N from
// [ADDR]:PORT on [ADDR]:PORT past MaxStartups".
var ErrMaxStartups = errors.New("sshd refused the connection: Exceeded MaxStartups")

// attemptTimeout bounds one client attempt, connection and all.
const attemptTimeout = 30 * time.Second

// Client makes attempts against the lab's sshd from a namespace: real ssh
// (with sshpass for passwords) and socat for the probes. Every argument is
// passed as its own argv element; no shell is involved.
type Client struct {
	NS     *netns.NS
	Server netip.Addr // the address connected to
	Port   int
	Bind   netip.Addr // the source address; zero lets the kernel choose

	key     string // private key authorized for keyUser; empty outside a Lab
	keyUser string
	strays  *strays // keys authorized nowhere, for TooManyAuthFailures
}

// strays are keys authorized nowhere, made on first use.
type strays struct {
	dir  string
	once sync.Once
	keys []string
	err  error
}

// NewClient returns a client in ns for an sshd that is not a Lab's, such as
// the one of a booted Debian (test/boot): every attempt but KeyLogin works.
func NewClient(t testing.TB, ns *netns.NS, server netip.Addr, port int) *Client {
	return &Client{NS: ns, Server: server, Port: port, strays: &strays{dir: t.TempDir()}}
}

// Peer returns a client in the peer namespace that connects over IPv4
// (from Pair.PeerV4).
func (l *Lab) Peer() *Client {
	return &Client{NS: l.Pair.Peer, Server: l.Pair.HostV4, Port: l.Port, key: l.key, keyUser: KeyUser, strays: l.strays}
}

// PeerV6 returns a client in the peer namespace that connects over IPv6
// (from Pair.PeerV6).
func (l *Lab) PeerV6() *Client {
	c := l.Peer()
	c.Server = l.Pair.HostV6
	return c
}

// WithKey returns a copy of c whose KeyLogin logs in as user with the
// private key at path, for an sshd that is not a Lab's.
func (c *Client) WithKey(user, path string) *Client {
	d := *c
	d.key, d.keyUser = path, user
	return &d
}

// From returns a copy of c that connects from addr, an address of c's
// namespace (see AddPeerAddress): a second attacker, or an innocent
// neighbour, on the same link.
func (c *Client) From(addr netip.Addr) *Client {
	d := *c
	d.Bind = addr
	return &d
}

// AddPeerAddress adds p (such as 192.0.2.3/24 or 2001:db8::3/64) to the peer
// end of the link, for clients that connect From it.
func (l *Lab) AddPeerAddress(t testing.TB, p netip.Prefix) {
	t.Helper()
	args := []string{"addr", "add", p.String(), "dev", l.Pair.PeerIf}
	if p.Addr().Is6() {
		args = []string{"-6", "addr", "add", p.String(), "dev", l.Pair.PeerIf, "nodad"}
	}
	l.Pair.Peer.MustRun(t, "ip", args...)
}

// sshArgs are the options of every ssh run: no config, no known hosts, no
// agent, bounded connection time.
func (c *Client) sshArgs(user string) []string {
	args := []string{
		"-F", "/dev/null",
		"-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "GlobalKnownHostsFile=/dev/null",
		"-o", "LogLevel=ERROR", "-o", "ConnectTimeout=5", "-o", "ConnectionAttempts=1",
		"-o", "IdentityAgent=none", "-o", "ForwardAgent=no",
		"-p", strconv.Itoa(c.Port), "-l", user,
	}
	if c.Bind.IsValid() {
		args = append(args, "-b", c.Bind.String())
	}
	return args
}

// run runs name with args in c's namespace, bounded by attemptTimeout, and
// returns the exit code (-1 when it did not exit by itself) and output.
func (c *Client) run(env []string, name string, args ...string) (int, string, error) {
	return c.runInput("", env, name, args...)
}

// runInput is run with stdin.
func (c *Client) runInput(stdin string, env []string, name string, args ...string) (int, string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), attemptTimeout)
	defer cancel()
	cmd := c.NS.Command(ctx, name, args...)
	cmd.Env = append([]string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C"}, env...)
	cmd.WaitDelay = 5 * time.Second
	cmd.Stdin = strings.NewReader(stdin)
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		return -1, string(out), fmt.Errorf("%s: no answer within %v: %s", name, attemptTimeout, out)
	}
	var exit *exec.ExitError
	if errors.As(err, &exit) {
		return exit.ExitCode(), string(out), nil
	}
	if err != nil {
		return -1, string(out), fmt.Errorf("%s: %w", name, err)
	}
	return 0, string(out), nil
}

// FailPassword makes one password login as user with a wrong password
// (ssh asks once: NumberOfPasswordPrompts=1). A user that does not exist
// makes sshd log "Invalid user". It returns an error unless the server
// refused the password.
func (c *Client) FailPassword(user string) error {
	args := append([]string{"-e", "ssh"}, c.sshArgs(user)...)
	args = append(args, "-o", "PreferredAuthentications=password", "-o", "PubkeyAuthentication=no",
		"-o", "NumberOfPasswordPrompts=1", c.Server.String(), "true")
	code, out, err := c.run([]string{"SSHPASS=" + WrongPassword}, "sshpass", args...)
	if err != nil {
		return fmt.Errorf("failed login as %q: %w", user, err)
	}
	if code != 255 || !strings.Contains(out, "Permission denied") {
		return fmt.Errorf("failed login as %q: want the password refused, got exit %d: %s", user, code, out)
	}
	return nil
}

// KeyLogin logs in with the authorized key (a Lab's: as KeyUser) and runs
// true: sshd logs "Accepted publickey". In a Lab the session then fails
// (nobody's shell is nologin); only a refused key or a broken connection is
// an error.
func (c *Client) KeyLogin() error {
	if c.key == "" {
		return errors.New("key login: this client has no authorized key (see WithKey)")
	}
	args := append(c.sshArgs(c.keyUser), "-i", c.key, "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
		"-o", "PreferredAuthentications=publickey", c.Server.String(), "true")
	code, out, err := c.run(nil, "ssh", args...)
	if err != nil {
		return fmt.Errorf("key login: %w", err)
	}
	if code == 255 {
		return fmt.Errorf("key login: exit %d: %s", code, out)
	}
	return nil
}

// TooManyAuthFailures offers seven keys that are authorized nowhere, one
// more than sshd's MaxAuthTries (6), so that sshd disconnects with "Too
// many authentication failures".
func (c *Client) TooManyAuthFailures(user string) error {
	keys, err := c.strays.get()
	if err != nil {
		return err
	}
	args := append(c.sshArgs(user), "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
		"-o", "PreferredAuthentications=publickey")
	for _, k := range keys {
		args = append(args, "-i", k)
	}
	args = append(args, c.Server.String(), "true")
	code, out, err := c.run(nil, "ssh", args...)
	if err != nil {
		return fmt.Errorf("too many auth failures as %q: %w", user, err)
	}
	if code != 255 || !strings.Contains(out, "Too many authentication failures") {
		return fmt.Errorf("too many auth failures as %q: want a disconnect, got exit %d: %s", user, code, out)
	}
	return nil
}

func (s *strays) get() ([]string, error) {
	s.once.Do(func() {
		for i := range 7 {
			k := filepath.Join(s.dir, fmt.Sprintf("stray%d_ed25519", i))
			if s.err = keygen(k); s.err != nil {
				return
			}
			s.keys = append(s.keys, k)
		}
	})
	return s.keys, s.err
}

// KexProbe offers only a key exchange sshd 9.2 does not enable
// (diffie-hellman-group14-sha1): sshd logs "Unable to negotiate".
func (c *Client) KexProbe() error {
	// ssh reports a failed negotiation at level INFO; the first value of an
	// option wins, so this one overrides sshArgs' LogLevel=ERROR.
	args := append([]string{"-o", "LogLevel=INFO"}, c.sshArgs("root")...)
	args = append(args, "-o", "KexAlgorithms=diffie-hellman-group14-sha1", "-o", "BatchMode=yes", c.Server.String(), "true")
	code, out, err := c.run(nil, "ssh", args...)
	if err != nil {
		return fmt.Errorf("kex probe: %w", err)
	}
	if code != 255 || !strings.Contains(out, "no matching key exchange method found") {
		return fmt.Errorf("kex probe: want no matching key exchange, got exit %d: %s", code, out)
	}
	return nil
}

// BannerProbe connects, sends line (plus \r\n) as the client's
// identification and reads until sshd closes. sshd answers a line that is
// not an SSH identification with "Invalid SSH identification string" and
// logs what was sent ("client sent invalid protocol identifier"); an empty
// line sends nothing and just closes.
func (c *Client) BannerProbe(line string) error {
	if strings.ContainsAny(line, "\r\n") {
		return fmt.Errorf("banner probe: line %q holds a line break", line)
	}
	addr := "TCP:" + netip.AddrPortFrom(c.Server, uint16(c.Port)).String() + ",connect-timeout=5"
	if c.Bind.IsValid() {
		addr += ",bind=" + netip.AddrPortFrom(c.Bind, 0).String()
	}
	in := ""
	if line != "" {
		in = line + "\r\n"
	}
	code, out, err := c.runInput(in, nil, "socat", "-T5", "-", addr)
	if err != nil {
		return fmt.Errorf("banner probe: %w", err)
	}
	if strings.HasPrefix(out, "Exceeded MaxStartups") {
		return fmt.Errorf("banner probe: %w", ErrMaxStartups)
	}
	if code != 0 || !strings.HasPrefix(out, "SSH-2.0-") {
		return fmt.Errorf("banner probe: want sshd's identification, got exit %d: %s", code, out)
	}
	return nil
}
