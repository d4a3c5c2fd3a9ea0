package firewall

import (
	"context"
	"encoding/binary"
	"fmt"
	"time"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// Watch blocks until ctx ends, calling changed whenever our table is found
// missing or different from the layout (`nft flush ruleset`, `nft delete
// table`, another manager rewriting it). The caller then runs Ensure and
// re-asserts its state.
//
// It polls the ruleset generation (NFT_MSG_GETGEN, a few bytes) every
// Config.WatchInterval on its own netlink socket, and only when the
// generation moved checks our table's structure (Present: sets, chains,
// rules; no elements). Our own element changes move the generation but leave
// the structure intact, so they never fire. It does not notice a foreign
// change to set elements alone (`nft flush set`); see docs/firewall.md.
//
// changed is also called once at the start if the table is not intact.
// Watch returns nil when ctx ends, or an error if the netlink socket fails.
func (f *NFT) Watch(ctx context.Context, changed func()) error {
	c, err := netlink.Dial(unix.NETLINK_NETFILTER, &netlink.Config{NetNS: f.conn.NetNS})
	if err != nil {
		return fmt.Errorf("watch: dial netlink: %w", err)
	}
	defer c.Close()
	last, err := generation(c)
	if err != nil {
		return fmt.Errorf("watch: %w", err)
	}
	if ok, err := f.Present(); err != nil {
		return fmt.Errorf("watch: %w", err)
	} else if !ok {
		changed()
	}
	tick := time.NewTicker(f.cfg.WatchInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
		gen, err := generation(c)
		if err != nil {
			return fmt.Errorf("watch: %w", err)
		}
		if gen == last {
			continue
		}
		last = gen
		ok, err := f.Present()
		if err != nil {
			f.log.Warn("watch: checking table failed", "err", err)
			continue
		}
		if !ok {
			f.log.Warn("nftables table changed or removed by someone else")
			changed()
		}
	}
}

// generation asks the kernel for the ruleset generation id, which every
// committed nftables transaction increments.
func generation(c *netlink.Conn) (uint32, error) {
	msgs, err := c.Execute(netlink.Message{
		Header: netlink.Header{
			Type:  netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_GETGEN),
			Flags: netlink.Request,
		},
		Data: []byte{unix.AF_UNSPEC, unix.NFNETLINK_V0, 0, 0},
	})
	if err != nil {
		return 0, fmt.Errorf("get generation: %w", err)
	}
	for _, m := range msgs {
		if len(m.Data) < 4 {
			continue
		}
		ad, err := netlink.NewAttributeDecoder(m.Data[4:])
		if err != nil {
			return 0, fmt.Errorf("decode generation: %w", err)
		}
		ad.ByteOrder = binary.BigEndian
		for ad.Next() {
			if ad.Type() == unix.NFTA_GEN_ID {
				return ad.Uint32(), nil
			}
		}
	}
	return 0, fmt.Errorf("get generation: no NFTA_GEN_ID in reply")
}
