package enforce

import (
	"log/slog"
	"net/netip"
	"time"

	"github.com/parryhq/parry/agent/api"
	"github.com/parryhq/parry/response"
)

// CodeSenderBlockCap refuses a policy block caused by a non-admin sender's
// signal once response.sender_block_cap is reached (docs/policy.md).
const CodeSenderBlockCap = "sender_block_cap"

// The cap on blocks made by non-admin senders' signals
// (response.sender_block_cap). It lives in the decision path, not in the
// policy engine: it counts the blocks a decision really made (a target
// already blocked at least as long, or refused by the guard, costs
// nothing), it must be checked and counted under the same lock as the
// enforcement so that concurrent signals cannot overshoot it, and it is
// audited; the engine knows neither outcomes nor who is an admin. The
// interval is a fixed window that starts with the first block counted after
// the previous one ended.

// senderCap is the cap's state; the decision path's lock (dp.mu) guards it.
type senderCap struct {
	cfg   func() response.BlockCap // the cap in force (the policy's config)
	audit func(event string, fields map[string]any) error
	log   *slog.Logger

	since   time.Time // start of the current window; zero: none yet
	blocks  int       // targets blocked or lengthened in the window
	refused int       // decisions refused in the window
	total   uint64    // decisions refused since start
}

// window rolls the window over if it has ended, auditing how many
// decisions the cap refused in it. Caller holds dp.mu.
func (bc *senderCap) window(c response.BlockCap, now time.Time) {
	if !bc.since.IsZero() && now.Before(bc.since.Add(c.Per.D())) {
		return
	}
	if bc.refused > 0 {
		bc.audit("sender_block_cap_end", map[string]any{"max": c.Max, "per": c.Per.String(), "blocks": bc.blocks,
			"refused": bc.refused, "since": bc.since.UTC().Format(time.RFC3339), "until": bc.since.Add(c.Per.D()).UTC().Format(time.RFC3339)})
	}
	bc.since, bc.blocks, bc.refused = now, 0, 0
}

// admit refuses a block when the cap is reached; the first refusal of
// a window is audited (one line with the counts), the others are not.
// Caller holds dp.mu.
func (bc *senderCap) admit(dec response.Decision, now time.Time) error {
	c := bc.cfg()
	bc.window(c, now)
	if bc.blocks < c.Max {
		return nil
	}
	bc.refused++
	bc.total++
	ends := bc.since.Add(c.Per.D())
	if bc.refused == 1 {
		bc.audit("sender_block_cap", map[string]any{"max": c.Max, "per": c.Per.String(), "blocks": bc.blocks,
			"since": bc.since.UTC().Format(time.RFC3339), "until": ends.UTC().Format(time.RFC3339),
			"first_refused": dec.ID, "sender": dec.Sender, "rule": dec.Rule})
		bc.log.Warn("sender block cap reached: policy blocks caused by non-admin senders are refused until the window ends",
			"max", c.Max, "per", c.Per, "until", ends)
	}
	return api.Errorf(CodeSenderBlockCap, "%d blocks caused by non-admin senders' signals within %s (response.sender_block_cap): this block is refused until %s",
		bc.blocks, api.FormatDuration(c.Per.D()), ends.UTC().Format(time.RFC3339))
}

// changes reports whether a non-admin block of targets would block or
// lengthen any of them (blockPlan.add's rule): one that changes nothing costs
// no part of the cap.
func (x *index) changes(dec response.Decision, targets []netip.Prefix, nowMs int64) bool {
	until := int64(0)
	if !dec.Until.IsZero() {
		until = dec.Until.UnixMilli()
	}
	for _, p := range targets {
		if old, ok := x.get(p); !ok || old.expired(nowMs) || outlasts(until, old.until) {
			return true
		}
	}
	return false
}

// status is the cap's state for op status. Caller holds dp.mu.
func (bc *senderCap) status(now time.Time) *api.BlockCapStatus {
	c := bc.cfg()
	st := &api.BlockCapStatus{Max: c.Max, Per: api.FormatDuration(c.Per.D()), RefusedTotal: bc.total}
	if !bc.since.IsZero() && now.Before(bc.since.Add(c.Per.D())) {
		st.Blocks, st.Refused, st.WindowEnds = bc.blocks, bc.refused, bc.since.Add(c.Per.D()).UTC()
		st.Refusing = bc.blocks >= c.Max
	}
	return st
}
