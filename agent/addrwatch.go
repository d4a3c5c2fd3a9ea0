package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// AddrEvents tells the daemon when the host's addresses change. Run
// calls changed after each change the kernel reports (and when it may have
// missed some); it returns when ctx ends or it cannot watch any more.
// Production uses NetlinkAddrs; tests inject their own.
type AddrEvents interface {
	Run(ctx context.Context, changed func()) error
}

// NetlinkAddrs follows rtnetlink's address notifications
// (RTNLGRP_IPV4_IFADDR, RTNLGRP_IPV6_IFADDR) in the network namespace of
// the process that runs it.
type NetlinkAddrs struct{}

var _ AddrEvents = NetlinkAddrs{}

// Run subscribes, then reads notifications until ctx ends. A receive
// buffer overrun (ENOBUFS: a burst of changes) counts as a change: the
// daemon re-reads every address anyway.
func (NetlinkAddrs) Run(ctx context.Context, changed func()) error {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, unix.NETLINK_ROUTE)
	if err != nil {
		return fmt.Errorf("address watch: netlink socket: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK, Groups: unix.RTMGRP_IPV4_IFADDR | unix.RTMGRP_IPV6_IFADDR}); err != nil {
		unix.Close(fd)
		return fmt.Errorf("address watch: bind: %w", err)
	}
	// A non-blocking descriptor goes through Go's poller: Close wakes a
	// pending Read, so ctx can end the loop.
	f := os.NewFile(uintptr(fd), "rtnetlink-addr")
	stop := context.AfterFunc(ctx, func() { f.Close() })
	defer func() {
		if stop() {
			f.Close()
		}
	}()
	changed() // whatever changed before the subscription
	buf := make([]byte, 64<<10)
	for {
		n, err := f.Read(buf)
		switch {
		case ctx.Err() != nil:
			return nil
		case errors.Is(err, unix.ENOBUFS):
			changed() // notifications were dropped: resync
			continue
		case err != nil:
			return fmt.Errorf("address watch: read: %w", err)
		}
		msgs, err := syscall.ParseNetlinkMessage(buf[:n])
		if err != nil {
			changed() // cannot tell what it said: resync
			continue
		}
		for _, m := range msgs {
			if m.Header.Type == unix.RTM_NEWADDR || m.Header.Type == unix.RTM_DELADDR {
				changed()
				break
			}
		}
	}
}
