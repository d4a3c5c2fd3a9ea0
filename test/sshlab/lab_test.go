package sshlab_test

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/parryhq/parry/test/sshlab"
)

const wait = 30 * time.Second

// Five failed password logins from the peer namespace make sshd log five
// "Failed password" lines naming the peer's address, and nothing else does.
func TestFailedPasswordsFromPeer(t *testing.T) {
	hostBtmp := fileSize("/var/log/btmp")
	lab := sshlab.Start(t, sshlab.Config{})
	peer := lab.Peer()
	var wg sync.WaitGroup
	errs := make(chan error, 5)
	for range 5 {
		wg.Go(func() { errs <- peer.FailPassword(sshlab.KeyUser) })
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if err := lab.WaitIdle(wait); err != nil {
		t.Fatal(err)
	}
	got, err := lab.Matching("Failed password")
	if err != nil {
		t.Fatal(err)
	}
	want := regexp.MustCompile(`^Failed password for nobody from ` + regexp.QuoteMeta(lab.Pair.PeerV4.String()) + ` port \d{1,5} ssh2$`)
	if len(got) != 5 {
		t.Fatalf("%d Failed password lines, want 5:\n%s", len(got), strings.Join(got, "\n"))
	}
	for _, line := range got {
		if !want.MatchString(line) {
			t.Errorf("line %q does not match %v", line, want)
		}
	}
	// sshd records failed logins in btmp: the lab's, never the host's.
	const utmpRecord = 384 // sizeof(struct utmp) on Linux
	if n := fileSize(filepath.Join(lab.Dir, "btmp")); n != 5*utmpRecord {
		t.Errorf("the lab's btmp holds %d bytes, want 5 records of %d", n, utmpRecord)
	}
	if n := fileSize("/var/log/btmp"); n != hostBtmp {
		t.Errorf("the host's /var/log/btmp changed from %d to %d bytes", hostBtmp, n)
	}
}

// fileSize returns the size of path, or -1 when it does not exist.
func fileSize(path string) int64 {
	fi, err := os.Stat(path)
	if err != nil {
		return -1
	}
	return fi.Size()
}

// sshd logs the user name as the client sent it: "x from 6.6.6.6" appears
// verbatim, so that an unanchored pattern takes the injected address while
// one anchored at the end of the line takes the client's.
func TestInjectedUserLoggedVerbatim(t *testing.T) {
	lab := sshlab.Start(t, sshlab.Config{})
	if err := lab.Peer().FailPassword(sshlab.InjectionUser); err != nil {
		t.Fatal(err)
	}
	peer := regexp.QuoteMeta(lab.Pair.PeerV4.String())
	for _, tc := range []struct{ literal, want string }{
		{"Invalid user ", `^Invalid user x from 6\.6\.6\.6 from ` + peer + ` port \d+$`},
		{"Failed password ", `^Failed password for invalid user x from 6\.6\.6\.6 from ` + peer + ` port \d+ ssh2$`},
	} {
		lines, err := lab.WaitLines(tc.literal, 1, wait)
		if err != nil {
			t.Fatal(err)
		}
		line := lines[0]
		if !regexp.MustCompile(tc.want).MatchString(line) {
			t.Fatalf("got %q, want it to match %s", line, tc.want)
		}
		naive := regexp.MustCompile(`from (\S+)`).FindStringSubmatch(line)
		anchored := regexp.MustCompile(`from (\S+) port \d+(?: ssh2)?$`).FindStringSubmatch(line)
		if naive == nil || naive[1] != "6.6.6.6" || anchored == nil || anchored[1] != lab.Pair.PeerV4.String() {
			t.Errorf("%q: unanchored pattern took %q, anchored %q; want 6.6.6.6 and %s", line, naive, anchored, lab.Pair.PeerV4)
		}
	}
}

// A login with the authorized key is logged as "Accepted publickey" (here
// at Debian's default LogLevel, into a log file the test chose): the
// negative case a detector must leave alone.
func TestKeyLoginAccepted(t *testing.T) {
	logPath := filepath.Join(t.TempDir(), "auth.log")
	lab := sshlab.Start(t, sshlab.Config{LogLevel: "INFO", LogPath: logPath})
	if lab.LogPath != logPath {
		t.Fatalf("LogPath %s, want %s", lab.LogPath, logPath)
	}
	if err := lab.Peer().KeyLogin(); err != nil {
		t.Fatal(err)
	}
	lines, err := lab.WaitLines("Accepted publickey for nobody from "+lab.Pair.PeerV4.String()+" port ", 1, wait)
	if err != nil {
		t.Fatal(err)
	}
	if err := lab.WaitIdle(wait); err != nil {
		t.Fatal(err)
	}
	if failed, _ := lab.Matching("Failed"); len(failed) != 0 {
		t.Errorf("a key login logged failures: %q (accepted: %q)", failed, lines)
	}
}

// Each probe and the second peer address produce the lines they are named
// for, with the address the connection came from.
func TestProbesAndSecondAddress(t *testing.T) {
	lab := sshlab.Start(t, sshlab.Config{})
	second := netip.MustParseAddr("192.0.2.3")
	lab.AddPeerAddress(t, netip.PrefixFrom(second, 24))
	peer := lab.Peer()
	steps := []struct {
		name    string
		attempt func() error
		literal string
	}{
		{"kex", peer.KexProbe, "Unable to negotiate with " + lab.Pair.PeerV4.String() + " port "},
		{"banner", func() error { return peer.BannerProbe("GET / HTTP/1.1") }, `client sent invalid protocol identifier "GET / HTTP/1.1"`},
		{"too many", func() error { return peer.TooManyAuthFailures(sshlab.KeyUser) }, "Too many authentication failures [preauth]"},
		{"second address", func() error { return peer.From(second).FailPassword("root") }, "Failed password for root from 192.0.2.3 port "},
		{"ipv6", func() error { return lab.PeerV6().FailPassword("root") }, "Failed password for root from " + lab.Pair.PeerV6.String() + " port "},
	}
	for _, s := range steps {
		if err := s.attempt(); err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
		if _, err := lab.WaitLines(s.literal, 1, wait); err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
	}
}

// Stop ends sshd and the connection children it forked, even one that is
// still waiting for a client's identification.
func TestStopEndsConnections(t *testing.T) {
	lab := sshlab.Start(t, sshlab.Config{})
	hold := lab.Pair.Peer.Command(t.Context(), "socat", "-", fmt.Sprintf("TCP:%s", netip.AddrPortFrom(lab.Pair.HostV4, uint16(lab.Port))))
	stdin, err := hold.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := hold.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { stdin.Close(); hold.Wait() }()
	if _, err := lab.WaitLines("Connection from "+lab.Pair.PeerV4.String(), 1, wait); err != nil {
		t.Fatal(err)
	}
	if err := lab.WaitIdle(500 * time.Millisecond); err == nil {
		t.Fatal("WaitIdle returned with a connection open")
	}
	if err := lab.Stop(); err != nil {
		t.Fatal(err)
	}
	if lab.Running() {
		t.Fatal("sshd still running after Stop")
	}
	// Sockets still held by a process (closed ones linger in TIME-WAIT
	// without an owner).
	out, err := lab.Pair.Host.Run("ss", "-Htanp")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(out, "sshd") {
		t.Errorf("sshd still holds sockets in the lab's namespace after Stop:\n%s", out)
	}
}
