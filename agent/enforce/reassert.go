package enforce

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/parryhq/parry/agent/store"
	"github.com/parryhq/parry/firewall"
)

// Reassert puts the allowlist, every active block (the union's pieces,
// with their remaining time, in one batch) and an active lockdown back
// into the kernel: at start, after the table was rebuilt, and after a
// foreign nftables change. Idempotent. If the kernel holds elements that
// overlap the pieces (left by an older layout, a crash, or someone else),
// it reads the sets and deletes the elements that are not pieces in the
// same transaction. It returns the number of pieces and whether a
// lockdown was restored.
func (dp *Path) Reassert() (blocks int, lockdown bool, err error) {
	dp.mu.Lock()
	defer dp.mu.Unlock()
	if err := dp.kernel.SetAllow(dp.gcfg.Allow); err != nil {
		return 0, false, fmt.Errorf("allowlist: %w", err)
	}
	nowMs := dp.now().UnixMilli()
	elems := dp.blocks.pieces(nowMs)
	if err := dp.kernel.Apply(nil, elems); err != nil {
		if !errors.Is(err, firewall.ErrOverlap) {
			return 0, false, fmt.Errorf("re-assert %d pieces: %w", len(elems), err)
		}
		have, rerr := dp.kernel.AllElements()
		if rerr != nil {
			return 0, false, fmt.Errorf("re-assert %d pieces: %w (reading the sets: %w)", len(elems), err, rerr)
		}
		if err := dp.kernel.Apply(notPieces(have, elems), elems); err != nil {
			return 0, false, fmt.Errorf("re-assert %d pieces: %w", len(elems), err)
		}
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

// pieces is every kernel element the blocks add up to, with its remaining
// time; from now on the union tracks changes. Caller holds dp.mu.
func (x *index) pieces(nowMs int64) []firewall.Element {
	pcs := x.un.Pieces()
	x.tracking = true
	elems := make([]firewall.Element, 0, len(pcs))
	for _, pc := range pcs {
		if e, ok := pieceElement(pc, nowMs); ok {
			elems = append(elems, e)
		}
	}
	return elems
}

// elemID is an element without its timeout.
type elemID struct {
	p     netip.Prefix
	scope firewall.Scope
}

func idOf(e firewall.Element) elemID { return elemID{e.Prefix.Masked(), e.Scope()} }

// notPieces is the elements of have that are not in want.
func notPieces(have, want []firewall.Element) []firewall.Element {
	in := make(map[elemID]bool, len(want))
	for _, e := range want {
		in[idOf(e)] = true
	}
	var out []firewall.Element
	for _, e := range have {
		if !in[idOf(e)] {
			out = append(out, e)
		}
	}
	return out
}

// RemoveUnknown removes the elements of have (read from the kernel) that
// are not pieces of the union of the active blocks, and returns them.
func (dp *Path) RemoveUnknown(have []firewall.Element) ([]netip.Prefix, error) {
	dp.mu.Lock()
	defer dp.mu.Unlock()
	unknown := notPieces(have, dp.blocks.pieces(dp.now().UnixMilli()))
	if len(unknown) == 0 {
		return nil, nil
	}
	if err := dp.kernel.Apply(unknown, nil); err != nil {
		return nil, fmt.Errorf("remove unknown elements: %w", err)
	}
	out := make([]netip.Prefix, len(unknown))
	for i, e := range unknown {
		out[i] = e.Prefix
	}
	return out, nil
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
	fw, _ := dp.blocks.kernelDiff(ch, dp.now().UnixMilli())
	for _, p := range expired {
		dp.blocks.del(p)
	}
	dp.blocks.settle()
	// What the expired blocks leave: the kernel dropped their pieces
	// itself; a live piece cannot change (their expiry was the latest
	// nowhere a live block covers), but apply what the union says.
	if err := dp.applyKernel(fw); err != nil {
		dp.kernelError(err)
	}
	dp.rec.Audit("expire", map[string]any{"targets": targetStrings(expired), "count": len(expired)})
}
