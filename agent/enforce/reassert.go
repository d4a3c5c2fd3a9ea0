package enforce

import (
	"fmt"
	"net/netip"
	"time"

	"github.com/parryhq/parry/agent/store"
	"github.com/parryhq/parry/firewall"
)

// Reassert puts the allowlist, every active block (with its remaining
// time, in one batch) and an active lockdown back into the kernel: at
// start, after the table was rebuilt, and after a foreign nftables change.
// Idempotent. It returns the number of blocks and whether a lockdown was
// restored.
func (dp *Path) Reassert() (blocks int, lockdown bool, err error) {
	dp.mu.Lock()
	defer dp.mu.Unlock()
	if err := dp.kernel.SetAllow(dp.gcfg.Allow); err != nil {
		return 0, false, fmt.Errorf("allowlist: %w", err)
	}
	nowMs := dp.now().UnixMilli()
	elems := make([]firewall.Element, 0, dp.blocks.len())
	for p, e := range dp.blocks.m.all() {
		if e.expired(nowMs) {
			continue
		}
		var t time.Duration
		if e.until != 0 {
			t = time.Duration(e.until-nowMs) * time.Millisecond
		}
		elems = append(elems, firewall.Element{Prefix: p, Timeout: t})
	}
	if err := dp.kernel.Block(elems); err != nil {
		return 0, false, fmt.Errorf("re-assert %d blocks: %w", len(elems), err)
	}
	lock, err := dp.lock.reassert()
	if err != nil {
		return 0, false, err
	}
	if len(elems) >= BulkTargets {
		dp.bulk()
	}
	return len(elems), lock, nil
}

// RemoveUnknown removes the elements of have (read from the kernel) that
// the store does not hold, or holds as expired, and returns them.
func (dp *Path) RemoveUnknown(have []firewall.Element) ([]netip.Prefix, error) {
	dp.mu.Lock()
	defer dp.mu.Unlock()
	nowMs := dp.now().UnixMilli()
	var unknown []netip.Prefix
	for _, e := range have {
		if be, ok := dp.blocks.get(e.Prefix); !ok || be.expired(nowMs) {
			unknown = append(unknown, e.Prefix)
		}
	}
	if len(unknown) > 0 {
		if err := dp.kernel.Unblock(unknown); err != nil {
			return nil, fmt.Errorf("remove unknown elements: %w", err)
		}
	}
	return unknown, nil
}

// Prune drops expired blocks from the store and the index (the kernel has
// already dropped them) and audits one `expire` event.
func (dp *Path) Prune() {
	dp.mu.Lock()
	defer dp.mu.Unlock()
	expired := dp.blocks.expiredBlocks(dp.now().UnixMilli())
	if len(expired) == 0 {
		return
	}
	ch := store.Change{DelBlocks: expired, DelDecisions: dp.blocks.orphans(expired)}
	if err := dp.store.Commit(ch); err != nil {
		dp.log.Error("prune expired blocks", "err", err)
		return
	}
	for _, p := range expired {
		dp.blocks.del(p)
	}
	dp.rec.Audit("expire", map[string]any{"targets": targetStrings(expired), "count": len(expired)})
}
