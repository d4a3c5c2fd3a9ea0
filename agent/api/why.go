package api

import (
	"encoding/json"
	"time"
)

// Why is the answer of op why (`parry why ADDR`): the active blocks
// covering an address, broadest first, and for each the decision that
// made it and the signals that caused it.
type Why struct {
	Addr   string     `json:"addr"`
	Blocks []WhyBlock `json:"blocks"`
}

// WhyBlock is one covering block and its decision.
type WhyBlock struct {
	BlockInfo
	Decided time.Time `json:"decided,omitzero"` // when the decision was made
	Admin   bool      `json:"admin,omitempty"`  // an admin's explicit block: only an admin lifts or shortens it
	// Cause are the signals that caused the decision (a JSON array of
	// signals as op signal takes them: kind, ip, user, source, time,
	// attrs ...), from the decision's store record; absent for a
	// decision no signal caused (an admin's, a feed's, the fleet's).
	Cause json.RawMessage `json:"cause,omitempty"`
}
