package api

import "time"

// Status is the answer to op status.
type Status struct {
	Version      string          `json:"version"`
	PID          int             `json:"pid"`
	Started      time.Time       `json:"started"`
	Uptime       string          `json:"uptime"`
	ActiveBlocks int             `json:"active_blocks"`
	Table        string          `json:"table"`
	TableHealth  Health          `json:"table_health"`
	Lockdown     LockdownState   `json:"lockdown"`
	StateDir     string          `json:"state_dir"`
	AuditSeq     uint64          `json:"audit_seq"`
	AuditBreak   *ChainBreak     `json:"audit_chain_broken,omitempty"` // until acknowledged (parry audit ack)
	AuditFailure *AuditFailure   `json:"audit_failure,omitempty"`      // while audit appends fail
	Policy       PolicyStatus    `json:"policy"`
	Fleet        *FleetStatus    `json:"fleet,omitempty"`   // absent: fleet off
	Sources      *SourcesSummary `json:"sources,omitempty"` // absent: no log source configured
}

// BlockInfo is one active block as op list reports it.
type BlockInfo struct {
	Target  string    `json:"target"`
	ID      string    `json:"id"`
	Created time.Time `json:"created"`
	Until   time.Time `json:"until,omitzero"` // absent: permanent
	Reason  string    `json:"reason,omitempty"`
	Source  string    `json:"source,omitempty"`
	Origin  string    `json:"origin,omitempty"`
	Rule    string    `json:"rule,omitempty"`
	Sender  string    `json:"sender,omitempty"`
	// Where the target's address is, when the geoip: databases know it.
	Country string `json:"country,omitempty"` // ISO 3166-1 alpha-2
	ASN     uint32 `json:"asn,omitempty"`
	ASOrg   string `json:"as_org,omitempty"`
}

// Health is the state of the nftables table as last seen.
type Health struct {
	Present   bool      `json:"present"`
	Checked   time.Time `json:"checked,omitzero"`
	Heals     int       `json:"heals"`                // times the table was found missing and rebuilt
	LastHeal  time.Time `json:"last_heal,omitzero"`   //
	LastError string    `json:"last_error,omitempty"` // last firewall error, if the last check failed
}

// LockdownState is the current lockdown, if any.
type LockdownState struct {
	Active  bool      `json:"active"`
	ID      string    `json:"id,omitempty"`
	Since   time.Time `json:"since,omitzero"`
	Until   time.Time `json:"until,omitzero"`
	Isolate bool      `json:"isolate,omitempty"`
	Allow   []string  `json:"allow,omitempty"`
	Reason  string    `json:"reason,omitempty"`
}

// ChainBreak records that audit.log did not hold the anchored line at
// start: the old file was kept aside and a new chain started. It stays
// reported (status, audit_verify) until an admin acknowledges it.
type ChainBreak struct {
	Time         time.Time `json:"time"`
	AnchorSeq    uint64    `json:"anchor_seq"`
	AnchorHash   string    `json:"anchor_hash"`
	Found        string    `json:"found"`             // what was wrong with the old log
	FoundAtLine  int       `json:"found_at_line"`     // 1-based line of the fault in the old log
	FoundLines   int       `json:"found_lines"`       // intact lines before the fault
	FoundLastSeq uint64    `json:"found_last_seq"`    // seq of the last intact line
	KeptAs       string    `json:"kept_as,omitempty"` // the old log, renamed; empty: it was missing
}

// PolicyStatus is the policy's part of op status.
type PolicyStatus struct {
	DryRun      bool   `json:"dry_run"`
	Rules       int    `json:"rules"`
	Signals     uint64 `json:"signals"`      // accepted since start
	NoRule      uint64 `json:"no_rule"`      // of which no rule counted
	Decisions   uint64 `json:"decisions"`    // made since start (dry run included)
	RateLimited uint64 `json:"rate_limited"` // signals refused by the per-sender limit
	Keys        int    `json:"keys"`         // counting state entries now
	Offenders   int    `json:"offenders"`    // escalation memory entries now
	Evicted     uint64 `json:"evicted"`      // counting state dropped to stay within max_keys
	// SenderBlockCap is response.sender_block_cap and where it stands.
	SenderBlockCap *BlockCapStatus `json:"sender_block_cap,omitempty"`
}

// FleetStatus is the fleet's part of op status (agent/fleet's Status), also read by the metrics.
type FleetStatus struct {
	Name        string    `json:"name"`
	Connected   bool      `json:"connected"`
	Server      string    `json:"server,omitempty"` // the server connected to (credentials redacted)
	CaughtUp    bool      `json:"caught_up"`
	Queued      int       `json:"queued"` // outgoing entries waiting for NATS
	QueueSize   int       `json:"queue_size"`
	Dropped     uint64    `json:"dropped"`    // outgoing entries dropped because the queue was full
	Published   uint64    `json:"published"`  // entries stored in the stream
	Received    uint64    `json:"received"`   // messages read from the stream
	Applied     uint64    `json:"applied"`    // remote decisions enforced here
	Refused     uint64    `json:"refused"`    // remote decisions the agent refused (guard) or failed
	Rejected    uint64    `json:"rejected"`   // malformed, unsigned or forged messages
	Echoes      uint64    `json:"echoes"`     // our own decisions coming back
	Duplicates  uint64    `json:"duplicates"` // remote decisions already applied
	Expired     uint64    `json:"expired"`    // remote blocks that had expired on arrival
	LastError   string    `json:"last_error,omitempty"`
	LastErrorAt time.Time `json:"last_error_at,omitzero"`
}

// AuditFailure is an audit log write or sync that failed, reported until
// an append succeeds again. While it lasts, requests that change state are
// refused with code "audit".
type AuditFailure struct {
	Since time.Time `json:"since"` // first failure of this run
	Op    string    `json:"op"`    // "write" or "sync"
	Error string    `json:"error"` // the last error
	Count int       `json:"count"` // failed appends and syncs since
}

// BlockCapStatus is the cap's part of op status.
type BlockCapStatus struct {
	Max          int       `json:"max"`
	Per          string    `json:"per"`
	Blocks       int       `json:"blocks"`               // in the current window
	Refusing     bool      `json:"refusing"`             // the cap is reached: blocks are refused until WindowEnds
	Refused      int       `json:"refused"`              // decisions refused in the current window
	RefusedTotal uint64    `json:"refused_total"`        // since start
	WindowEnds   time.Time `json:"window_ends,omitzero"` // absent: no window open
}
