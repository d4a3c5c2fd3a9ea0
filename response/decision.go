// Package response is parry's policy engine: signals and integrity findings
// in, decisions out. It is pure logic with an injected clock; it imports none
// of parry's other packages and speaks only in its own types. The agent hands
// its decisions to the store, the firewall and the audit log.
package response

import (
	"net/netip"
	"time"
)

// Action is what a decision asks for.
type Action string

// The actions a decision can carry.
const (
	ActionBlock    Action = "block"    // drop traffic from Targets until Until (zero: permanent)
	ActionUnblock  Action = "unblock"  // remove Targets
	ActionLockdown Action = "lockdown" // drop all new inbound traffic except Allow, until Until (never zero)
	ActionRelease  Action = "release"  // end a lockdown
	ActionNotify   Action = "notify"   // tell people; touch nothing
	ActionLog      Action = "log"      // record only (dry run: what would have happened)
)

// Decision is one thing parry decided to do, with its cause. It is the common
// currency between the sources (CLI, policy, integrity, fleet) and the agent
// that stores, enforces and records it.
type Decision struct {
	ID      string         `json:"id"`                // unique, assigned by the agent if empty
	Action  Action         `json:"action"`            //
	Targets []netip.Prefix `json:"targets,omitempty"` // block/unblock: IPs as /32 or /128, or CIDRs
	Until   time.Time      `json:"until,omitzero"`    // block: zero means permanent; lockdown: required
	Reason  string         `json:"reason,omitempty"`  // human text
	Source  string         `json:"source,omitempty"`  // who asked: "cli", "policy", "integrity", "fleet"
	Origin  string         `json:"origin,omitempty"`  // host that made the decision (fleet); empty: this host
	Rule    string         `json:"rule,omitempty"`    // policy rule that fired, if any
	Sender  string         `json:"sender,omitempty"`  // local peer that asked ("uid=0(root)")
	Cause   []Signal       `json:"cause,omitempty"`   // the signals that triggered it
	Allow   []netip.Prefix `json:"allow,omitempty"`   // lockdown: extra allowlist for this lockdown
	Isolate bool           `json:"isolate,omitempty"` // lockdown: drop outbound too, except to the allowlist
	DryRun  bool           `json:"dry_run,omitempty"` // recorded, never enforced
	// Admin marks an explicit decision of a local admin (op block, unblock,
	// lockdown, release): only such a decision may shorten or lift a block,
	// shorten or loosen a lockdown. Every other decision (policy, fleet,
	// feeds, log sources) may lengthen a block and never lifts an admin's.
	// It is set by the agent's admin ops alone and never read from outside
	// input (not in JSON).
	Admin bool `json:"-"`
}

// Signal is one observation reported by another program, the CLI, or the
// integrity watcher.
type Signal struct {
	Kind     string            `json:"kind"`               // free-form name the policy refers to: "auth_failure"
	IP       netip.Addr        `json:"ip,omitzero"`        // the remote address it is about, if any
	User     string            `json:"user,omitempty"`     // the account it is about, if any
	Source   string            `json:"source,omitempty"`   // free-form name of the reporting program: "webapp"
	Severity string            `json:"severity,omitempty"` // "low", "medium", "high", "critical"
	Path     string            `json:"path,omitempty"`     // integrity findings: the file
	Detail   string            `json:"detail,omitempty"`   // human text
	Time     time.Time         `json:"time,omitzero"`      // when it was seen; the agent sets it on receipt
	Sender   Sender            `json:"-"`                  // the local peer that sent it (SO_PEERCRED)
	Attrs    map[string]string `json:"attrs,omitempty"`    // anything else the sender wants recorded
}

// Sender is the local peer of a control-socket connection, from SO_PEERCRED.
type Sender struct {
	UID    uint32   `json:"uid"`
	GID    uint32   `json:"gid"`
	PID    int32    `json:"pid"`
	User   string   `json:"user,omitempty"`
	Groups []string `json:"groups,omitempty"` // names of the user's groups, primary first
}
