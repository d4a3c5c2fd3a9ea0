package firewall_test

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"
	"testing"
	"time"

	"github.com/parryhq/parry/test/netns"
	"golang.org/x/sys/unix"
)

// inNS runs fn on an OS thread that has joined ns's network namespace and
// waits for it. The thread stays locked and is discarded when fn returns
// (a goroutine that exits locked takes its thread with it), so no thread
// ever goes back to the pool inside the test namespace. Sockets fn creates
// belong to ns and may be used from any goroutine afterwards.
func inNS(t testing.TB, ns *netns.NS, fn func()) {
	t.Helper()
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: see above
		f, err := os.Open(ns.Path)
		if err != nil {
			done <- err
			return
		}
		defer f.Close()
		if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
			done <- fmt.Errorf("setns %s: %w", ns.Name, err)
			return
		}
		fn()
		done <- nil
	}()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// dialTCP connects from ns to dst and returns the error (nil: connected).
// A dropped SYN gives a timeout; a TCP reset gives ECONNREFUSED at once.
func dialTCP(t testing.TB, ns *netns.NS, dst netip.AddrPort, timeout time.Duration) error {
	var err error
	inNS(t, ns, func() {
		var c net.Conn
		c, err = net.DialTimeout("tcp", dst.String(), timeout)
		if err == nil {
			c.Close()
		}
	})
	return err
}

// isTimeout reports whether err is a network timeout.
func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// serveUDPEcho answers every datagram on port in ns (IPv4 and IPv6) until
// the test ends.
func serveUDPEcho(t testing.TB, ns *netns.NS, port int) {
	t.Helper()
	var pc net.PacketConn
	var err error
	inNS(t, ns, func() { pc, err = net.ListenPacket("udp", fmt.Sprintf(":%d", port)) })
	if err != nil {
		t.Fatalf("listen udp %d in %s: %v", port, ns.Name, err)
	}
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 1500)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			_, _ = pc.WriteTo(buf[:n], from)
		}
	}()
}

// udpExchange sends one datagram from ns to dst on a connected socket and
// waits for the answer: nil when answered, a timeout when dropped, the
// errno of an ICMP error otherwise (EHOSTUNREACH for IPv4 administratively
// prohibited, EACCES for ICMPv6 administratively prohibited).
func udpExchange(t testing.TB, ns *netns.NS, dst netip.AddrPort, timeout time.Duration) error {
	var c net.Conn
	var err error
	inNS(t, ns, func() { c, err = net.Dial("udp", dst.String()) })
	if err != nil {
		return err
	}
	defer c.Close()
	deadline := time.Now().Add(timeout)
	_ = c.SetDeadline(deadline)
	buf := make([]byte, 64)
	for {
		// Resend every 200 ms (a first datagram may wait for neighbour
		// discovery); an ICMP error is reported on the next read.
		if _, err := c.Write([]byte("parry")); err != nil {
			return err
		}
		next := time.Now().Add(200 * time.Millisecond)
		if next.After(deadline) {
			next = deadline
		}
		_ = c.SetReadDeadline(next)
		_, err := c.Read(buf)
		if err == nil || !isTimeout(err) || !time.Now().Before(deadline) {
			return err
		}
	}
}

// icmpAnswer is what an ICMP echo request got back.
type icmpAnswer struct {
	Type, Code int // -1, -1: nothing
}

var (
	echoReply4  = icmpAnswer{0, 0}
	echoReply6  = icmpAnswer{129, 0}
	prohibited4 = icmpAnswer{3, 13} // destination unreachable, communication administratively prohibited
	prohibited6 = icmpAnswer{1, 1}  // destination unreachable, administratively prohibited
	noAnswer    = icmpAnswer{-1, -1}
)

// pingAnswer sends ICMP echo requests from ns to dst (one every 200 ms)
// over a raw socket and returns the first echo reply or destination
// unreachable that comes back within timeout.
func pingAnswer(t testing.TB, ns *netns.NS, dst netip.Addr, timeout time.Duration) icmpAnswer {
	t.Helper()
	ans := noAnswer
	var err error
	inNS(t, ns, func() { ans, err = ping(dst, timeout) })
	if err != nil {
		t.Fatal(err)
	}
	return ans
}

func ping(dst netip.Addr, timeout time.Duration) (icmpAnswer, error) {
	family, proto, echo := unix.AF_INET6, unix.IPPROTO_ICMPV6, byte(128)
	var sa unix.Sockaddr = &unix.SockaddrInet6{Addr: dst.As16()}
	if dst.Is4() {
		family, proto, echo = unix.AF_INET, unix.IPPROTO_ICMP, 8
		sa = &unix.SockaddrInet4{Addr: dst.As4()}
	}
	fd, err := unix.Socket(family, unix.SOCK_RAW|unix.SOCK_CLOEXEC, proto)
	if err != nil {
		return noAnswer, fmt.Errorf("raw socket: %w", err)
	}
	defer unix.Close(fd)
	tv := unix.NsecToTimeval((200 * time.Millisecond).Nanoseconds())
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		return noAnswer, err
	}
	req := []byte{echo, 0, 0, 0, 0x70, 0x72, 0, 1, 'p', 'a', 'r', 'r', 'y'}
	if dst.Is4() { // the kernel computes ICMPv6 checksums itself
		binary.BigEndian.PutUint16(req[2:], checksum(req))
	}
	buf := make([]byte, 1500)
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if err := unix.Sendto(fd, req, 0, sa); err != nil {
			return noAnswer, fmt.Errorf("send echo: %w", err)
		}
		for {
			n, _, err := unix.Recvfrom(fd, buf, 0)
			if err != nil {
				break // EAGAIN after 200 ms: send again
			}
			msg := buf[:n]
			if dst.Is4() { // IPv4 raw sockets deliver the IP header too
				if n < 20 {
					continue
				}
				msg = msg[int(msg[0]&0x0f)*4:]
			}
			if len(msg) < 2 {
				continue
			}
			a := icmpAnswer{int(msg[0]), int(msg[1])}
			if a == echoReply4 && dst.Is4() || a == echoReply6 && dst.Is6() || a.Type == 3 && dst.Is4() || a.Type == 1 && dst.Is6() {
				return a, nil
			}
		}
	}
	return noAnswer, nil
}

func checksum(b []byte) uint16 {
	var s uint32
	for i := 0; i+1 < len(b); i += 2 {
		s += uint32(b[i])<<8 | uint32(b[i+1])
	}
	if len(b)%2 == 1 {
		s += uint32(b[len(b)-1]) << 8
	}
	for s>>16 != 0 {
		s = s&0xffff + s>>16
	}
	return ^uint16(s)
}
