package firewall

import (
	"fmt"

	"github.com/google/nftables"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// receiveBufferBytes is the receive buffer ConnOptions asks for: room for
// the acknowledgements of the largest transaction with margin.
const receiveBufferBytes = 4 << 20

// sendBufferBytes is the send buffer ConnOptions asks for. The kernel
// refuses a sendmsg larger than the buffer (EMSGSIZE), and a transaction is
// one sendmsg; the default buffer (net.core.wmem_default, 212,992 bytes)
// holds about 7,000 IPv4 elements.
const sendBufferBytes = 2 * DefaultMaxTxBytes

// ConnOptions are the options for the long-lived connection parry uses:
// lasting (one socket for the daemon's life) with a send buffer large enough
// for DefaultMaxTxBytes, a larger receive buffer, and NETLINK_CAP_ACK so
// that an error acknowledgement does not echo the whole failed message (a
// failed 100,000-element transaction otherwise overflows the receive buffer
// with 60 KiB echoes, the kernel drops acknowledgements, and the lasting
// socket is left out of step). Production:
// nftables.New(firewall.ConnOptions()...); add nftables.WithNetNSFd to work
// in another namespace.
func ConnOptions() []nftables.ConnOption {
	return []nftables.ConnOption{
		nftables.AsLasting(),
		nftables.WithSockOptions(func(c *netlink.Conn) error {
			if err := setBuffer(c, unix.SO_SNDBUFFORCE, unix.SO_SNDBUF, sendBufferBytes); err != nil {
				return err
			}
			if err := setBuffer(c, unix.SO_RCVBUFFORCE, unix.SO_RCVBUF, receiveBufferBytes); err != nil {
				return err
			}
			if err := c.SetOption(netlink.CapAcknowledge, true); err != nil {
				return fmt.Errorf("set NETLINK_CAP_ACK: %w", err)
			}
			return nil
		}),
	}
}

// setBuffer sets a socket buffer size, with the FORCE option (needs
// CAP_NET_ADMIN, which an nftables client has anyway) and, failing that,
// the plain one capped by net.core.[rw]mem_max.
func setBuffer(c *netlink.Conn, force, plain, n int) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return fmt.Errorf("netlink socket: %w", err)
	}
	var serr error
	err = rc.Control(func(fd uintptr) {
		if serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, force, n); serr != nil {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, plain, n)
		}
	})
	if err != nil {
		return fmt.Errorf("netlink socket: %w", err)
	}
	if serr != nil {
		return fmt.Errorf("set netlink socket buffer: %w", serr)
	}
	return nil
}
