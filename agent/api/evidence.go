package api

import (
	"net/netip"
	"time"
)

// EvidenceRecord describes one stored evidence file (agent/evidence's Record).
type EvidenceRecord struct {
	ID      string    `json:"id"`
	Path    string    `json:"path"`
	SHA256  string    `json:"sha256"`
	Size    int64     `json:"size"`
	Time    time.Time `json:"time"`
	Reason  string    `json:"reason,omitempty"`
	Trigger string    `json:"trigger,omitempty"`
	Mode    string    `json:"mode"`
}

// Snapshot is one capture of the host, as stored under <state_dir>/evidence
// and answered by op evidence_show (agent/evidence's Snapshot). The
// collector fills the host facts; the agent fills Blocks and Findings from
// its own state before saving.
type Snapshot struct {
	ID         string        `json:"id"`
	Reason     string        `json:"reason"`
	Trigger    string        `json:"trigger,omitempty"` // "cli", "lockdown", "integrity", ...
	Hostname   string        `json:"hostname,omitempty"`
	Started    time.Time     `json:"started"`
	Duration   time.Duration `json:"duration_ns"`
	Incomplete bool          `json:"incomplete,omitempty"` // the deadline cut collection short
	Errors     []string      `json:"errors,omitempty"`     // parts that failed, and why

	BootTime time.Time `json:"boot_time,omitzero"`
	UptimeS  uint64    `json:"uptime_s"`
	Load     Load      `json:"load"`
	Users    []Session `json:"users"`

	Processes          []Process    `json:"processes"`
	ProcessesTotal     int          `json:"processes_total"`
	ProcessesTruncated bool         `json:"processes_truncated,omitempty"`
	Connections        []Connection `json:"connections"`
	ConnectionsTotal   int          `json:"connections_total"`
	ConnTruncated      bool         `json:"connections_truncated,omitempty"`
	Listening          []Connection `json:"listening"`
	ListeningTruncated bool         `json:"listening_truncated,omitempty"`

	Blocks          []SnapshotBlock   `json:"blocks"` // filled by the agent: active blocks
	BlocksTotal     int               `json:"blocks_total"`
	BlocksTruncated bool              `json:"blocks_truncated,omitempty"`
	Lockdown        *SnapshotLockdown `json:"lockdown"` // filled by the agent: active lockdown, if any
	Findings        []SnapshotFinding `json:"findings"` // filled by the agent: open integrity findings
}

// Load is the load average.
type Load struct {
	Load1  float64 `json:"load1"`
	Load5  float64 `json:"load5"`
	Load15 float64 `json:"load15"`
}

// Session is one logged-in session.
type Session struct {
	User     string    `json:"user"`
	Terminal string    `json:"terminal,omitempty"`
	Host     string    `json:"host,omitempty"`
	Started  time.Time `json:"started,omitzero"`
}

// Process is one process as seen in /proc.
type Process struct {
	PID       int32     `json:"pid"`
	PPID      int32     `json:"ppid"`
	UID       int32     `json:"uid"`
	User      string    `json:"user,omitempty"`
	Name      string    `json:"name,omitempty"`
	Exe       string    `json:"exe,omitempty"`
	Cmdline   []string  `json:"cmdline,omitempty"`
	Truncated bool      `json:"cmdline_truncated,omitempty"`
	Started   time.Time `json:"started,omitzero"`
}

// Connection is one inet socket with its owning process, if known.
type Connection struct {
	Proto  string         `json:"proto"` // tcp, tcp6, udp, udp6
	Local  netip.AddrPort `json:"local"`
	Remote netip.AddrPort `json:"remote,omitzero"`
	State  string         `json:"state,omitempty"`
	PID    int32          `json:"pid,omitempty"`
	Name   string         `json:"name,omitempty"` // process name
	Exe    string         `json:"exe,omitempty"`
}

// SnapshotBlock is an active block, as the agent knows it.
type SnapshotBlock struct {
	Prefix netip.Prefix `json:"prefix"`
	Until  time.Time    `json:"until,omitzero"`
	Reason string       `json:"reason,omitempty"`
}

// SnapshotLockdown is the active lockdown, as the agent knows it.
type SnapshotLockdown struct {
	Until   time.Time `json:"until"`
	Isolate bool      `json:"isolate,omitempty"`
	Reason  string    `json:"reason,omitempty"`
}

// SnapshotFinding is an open integrity finding, as the agent knows it.
type SnapshotFinding struct {
	Path     string    `json:"path"`
	Kind     string    `json:"kind,omitempty"`
	Severity string    `json:"severity,omitempty"`
	Detail   string    `json:"detail,omitempty"`
	Time     time.Time `json:"time,omitzero"`
	Actor    string    `json:"actor,omitempty"` // who changed it, one line (integrity.attribution)
	Diff     string    `json:"diff,omitempty"`  // what changed, the diff cut to 1,000 bytes, or why there is none
}

// EvidenceInfo is a stored snapshot with its hash as the audit chain
// recorded it and whether the file still matches.
type EvidenceInfo struct {
	EvidenceRecord
	Recorded string `json:"recorded_sha256"` // from the audit log; empty: not found there
	Intact   bool   `json:"intact"`          // file hash == recorded hash, mode 0400
}
