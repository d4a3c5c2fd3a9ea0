// Package droptable deletes one nftables table of family inet with a
// single netlink request, without google/nftables: it is the parry CLI's
// way to remove parry's table when parryd is not running (`parry
// uninstall-rules`), so that the CLI links none of the firewall's code.
// The daemon and `parryd --remove-rules` use package firewall.
package droptable

import (
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"golang.org/x/sys/unix"
)

// maxName is the kernel's limit on a table name (NFT_TABLE_MAXNAMELEN
// with its NUL).
const maxName = 255

// timeout bounds the wait for the kernel's answer.
const timeout = 5 * time.Second

// Inet deletes table inet name in the network namespace of the calling
// thread. It reports false, and no error, when there is no such table.
// Nothing outside that table is touched.
func Inet(name string) (deleted bool, err error) {
	if name == "" || len(name) > maxName {
		return false, fmt.Errorf("delete table inet %.40q: the name must be 1 to %d bytes", name, maxName)
	}
	for i := range len(name) {
		if name[i] == 0 {
			return false, fmt.Errorf("delete table inet %.40q: NUL in the name", name)
		}
	}
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_NETFILTER)
	if err != nil {
		return false, fmt.Errorf("delete table inet %s: netlink socket: %w", name, err)
	}
	defer unix.Close(fd)
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return false, fmt.Errorf("delete table inet %s: bind netlink socket: %w", name, err)
	}
	tv := unix.NsecToTimeval(timeout.Nanoseconds())
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		return false, fmt.Errorf("delete table inet %s: %w", name, err)
	}
	const seq = 2 // the delete's; the batch markers are 1 and 3
	if err := unix.Sendto(fd, request(name, seq), 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return false, fmt.Errorf("delete table inet %s: send: %w", name, err)
	}
	buf := make([]byte, 64<<10)
	for {
		n, _, err := unix.Recvfrom(fd, buf, 0)
		if err != nil {
			if errors.Is(err, unix.EAGAIN) {
				err = fmt.Errorf("no answer from the kernel within %s", timeout)
			}
			return false, fmt.Errorf("delete table inet %s: %w", name, err)
		}
		errno, found, err := ackFor(buf[:n], seq)
		if err != nil {
			return false, fmt.Errorf("delete table inet %s: %w", name, err)
		}
		if !found {
			continue
		}
		switch errno {
		case 0:
			return true, nil
		case unix.ENOENT:
			return false, nil
		}
		return false, fmt.Errorf("delete table inet %s: %w", name, errno)
	}
}

// request is one netlink batch: begin, delete table (asking for an ack),
// end.
func request(name string, seq uint32) []byte {
	attr := make([]byte, 4, 4+len(name)+1+3)
	attr = append(append(attr, name...), 0)
	binary.NativeEndian.PutUint16(attr[0:], uint16(len(attr)))
	binary.NativeEndian.PutUint16(attr[2:], unix.NFTA_TABLE_NAME)
	for len(attr)%4 != 0 {
		attr = append(attr, 0)
	}
	var b []byte
	b = message(b, unix.NFNL_MSG_BATCH_BEGIN, unix.NLM_F_REQUEST, seq-1, unix.AF_UNSPEC, unix.NFNL_SUBSYS_NFTABLES, nil)
	b = message(b, unix.NFNL_SUBSYS_NFTABLES<<8|unix.NFT_MSG_DELTABLE, unix.NLM_F_REQUEST|unix.NLM_F_ACK, seq, unix.NFPROTO_INET, 0, attr)
	return message(b, unix.NFNL_MSG_BATCH_END, unix.NLM_F_REQUEST, seq+1, unix.AF_UNSPEC, unix.NFNL_SUBSYS_NFTABLES, nil)
}

// message appends a netlink header, an nfgenmsg and the attributes.
func message(b []byte, typ, flags uint16, seq uint32, family uint8, resID uint16, attrs []byte) []byte {
	h := make([]byte, unix.NLMSG_HDRLEN+4)
	binary.NativeEndian.PutUint32(h[0:], uint32(len(h)+len(attrs)))
	binary.NativeEndian.PutUint16(h[4:], typ)
	binary.NativeEndian.PutUint16(h[6:], flags)
	binary.NativeEndian.PutUint32(h[8:], seq)
	h[16], h[17] = family, unix.NFNETLINK_V0
	binary.BigEndian.PutUint16(h[18:], resID)
	return append(append(b, h...), attrs...)
}

// ackFor finds the kernel's NLMSG_ERROR answer to seq in a datagram: its
// errno (0: done), and whether it was there.
func ackFor(b []byte, seq uint32) (unix.Errno, bool, error) {
	for len(b) >= unix.NLMSG_HDRLEN {
		l := binary.NativeEndian.Uint32(b[0:])
		if l < unix.NLMSG_HDRLEN || int(l) > len(b) {
			return 0, false, errors.New("malformed netlink answer")
		}
		typ, mseq := binary.NativeEndian.Uint16(b[4:]), binary.NativeEndian.Uint32(b[8:])
		if typ == unix.NLMSG_ERROR && mseq == seq {
			if l < unix.NLMSG_HDRLEN+4 {
				return 0, false, errors.New("short netlink error message")
			}
			code := int32(binary.NativeEndian.Uint32(b[unix.NLMSG_HDRLEN:]))
			return unix.Errno(-code), true, nil
		}
		next := (int(l) + unix.NLMSG_ALIGNTO - 1) &^ (unix.NLMSG_ALIGNTO - 1)
		if next >= len(b) {
			break
		}
		b = b[next:]
	}
	return 0, false, nil
}
