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
// table`, another manager rewriting it), and foreign (if not nil) whenever
// someone else committed a transaction while the structure stayed intact:
// that may have been `nft delete element` or `nft flush set` on our sets,
// or just another table's change; Watch cannot tell without reading the
// elements. The caller runs Ensure and re-asserts its state on changed, and
// re-asserts its elements (rate-limited) on foreign.
//
// It polls the ruleset generation (NFT_MSG_GETGEN, a few bytes) every
// Config.WatchInterval on its own netlink socket. The firewall keeps, under
// its lock, the generation up to which every commit is accounted for: Watch
// sets it at each poll, and each successful transaction of ours reads the
// generation after its flush and advances it when it moved by exactly one
// from there. So if Watch finds a generation other than that one, someone
// else committed since its last poll. Only then does it check our table's
// structure (Present: sets, chains, rules; no elements). Our own changes
// never fire.
//
// changed is also called once at the start if the table is not intact.
// Watch returns nil when ctx ends, or an error if the netlink socket fails.
// Run at most one Watch per NFT.
func (f *NFT) Watch(ctx context.Context, changed, foreign func()) error {
	c, err := netlink.Dial(unix.NETLINK_NETFILTER, &netlink.Config{NetNS: f.conn.NetNS})
	if err != nil {
		return fmt.Errorf("watch: dial netlink: %w", err)
	}
	defer c.Close()
	f.mu.Lock()
	f.genConn = c
	gen, err := generation(c)
	f.known = gen
	f.mu.Unlock()
	defer func() {
		f.mu.Lock()
		f.genConn = nil
		f.mu.Unlock()
	}()
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
		f.mu.Lock()
		gen, err := generation(c)
		moved := err == nil && gen != f.known
		if err == nil {
			f.known = gen
		}
		f.mu.Unlock()
		if err != nil {
			return fmt.Errorf("watch: %w", err)
		}
		if !moved {
			continue
		}
		ok, err := f.Present()
		if err != nil {
			f.log.Warn("watch: checking table failed", "err", err)
			continue
		}
		switch {
		case !ok:
			f.log.Warn("nftables table changed or removed by someone else")
			changed()
		case foreign != nil:
			f.log.Debug("foreign nftables commit; table structure intact")
			foreign()
		}
	}
}

// noteOwn runs after each successful transaction of ours, if Watch is
// running: when the generation is exactly one past the accounted one, the
// commit was ours and is accounted for. Anything else (a foreign commit
// before or right after ours, a failed read) is left for Watch to see as
// foreign: a spurious re-assert at worst, never a missed foreign change.
// Called with f.mu held.
func (f *NFT) noteOwn() {
	if f.genConn == nil {
		return
	}
	if g, err := generation(f.genConn); err == nil && g == f.known+1 {
		f.known = g
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
