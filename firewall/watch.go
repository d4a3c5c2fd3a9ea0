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
// Config.WatchInterval on its own netlink socket. While Watch runs, every
// transaction of ours reads the generation before and after, under the
// firewall's lock, and counts itself as ours when the generation moved by
// exactly one. Watch reads the generation and that count under the same
// lock, so when the generation moved by more than our count, someone else
// committed. Only then does it check our table's structure (Present: sets,
// chains, rules; no elements). Our own changes never fire.
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
	last, err := generation(c)
	lastOwn := f.ownCommits
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
		own := f.ownCommits
		f.mu.Unlock()
		if err != nil {
			return fmt.Errorf("watch: %w", err)
		}
		moved, ours := gen-last, uint32(own-lastOwn)
		last, lastOwn = gen, own
		if moved == ours {
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
			f.log.Debug("foreign nftables commit; table structure intact", "commits", moved-ours)
			foreign()
		}
	}
}

// genBefore reads the generation before one of our transactions, if Watch
// is running (otherwise nobody needs the count). Called with f.mu held.
func (f *NFT) genBefore() (uint32, bool) {
	if f.genConn == nil {
		return 0, false
	}
	g, err := generation(f.genConn)
	return g, err == nil
}

// countOwn counts a successful transaction of ours if the generation moved
// by exactly one since before. Anything else (a foreign commit in between,
// a failed read) is left uncounted, so Watch sees it as foreign: a spurious
// re-assert at worst, never a missed foreign change. Called with f.mu held.
func (f *NFT) countOwn(before uint32) {
	if f.genConn == nil {
		return
	}
	if g, err := generation(f.genConn); err == nil && g == before+1 {
		f.ownCommits++
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
