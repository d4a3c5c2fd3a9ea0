package api

import (
	"cmp"
	"encoding/json"
	"fmt"
	"net/netip"
	"strings"
	"time"
)

// The types below are the wire twins of answers whose daemon-side types
// carry more than the wire: enforce.Outcome (the prefixes applied, the error
// for observers), agent.SignalResult (its own fast encoder, the policy's
// types), agent.LockdownResult and agent.IntegrityStatus (integrity's own
// types). Each has the same JSON as its daemon type; agent's
// TestWireTwins encodes the daemon's value and this one's after a round
// trip and compares them byte for byte.

// Outcome is the answer to block, unblock and release: what enforcing one
// decision did.
type Outcome struct {
	ID       string    `json:"decision_id"`
	Action   string    `json:"action"`              // block, unblock, lockdown, release, notify, log
	Added    int       `json:"added,omitempty"`     // new blocks
	Updated  int       `json:"updated,omitempty"`   // existing blocks whose expiry changed
	Removed  int       `json:"removed,omitempty"`   // unblocked
	Kept     []string  `json:"kept,omitempty"`      // targets left as they were: blocked at least as long, or an admin's block (docs/policy.md)
	NotFound []string  `json:"not_found,omitempty"` // unblock: targets that were not blocked
	Refused  []*Error  `json:"refused,omitempty"`   // targets the guard refused (partial mode)
	Until    time.Time `json:"until,omitzero"`      // block/lockdown: when it ends; zero = permanent
	DryRun   bool      `json:"dry_run,omitempty"`   // recorded, not enforced
}

// LockdownResult is the answer to op lockdown.
type LockdownResult struct {
	Outcome
	Lockdown LockdownState `json:"lockdown"`
}

// SignalResult is the answer to op signal: what the policy made of the
// signal ("no_rule", "counted" or "decided"), and for each decision what
// enforcing it did.
type SignalResult struct {
	Outcome   string           `json:"outcome"`
	Progress  []Progress       `json:"progress,omitempty"`
	Decisions []SignalDecision `json:"decisions,omitempty"`
}

// Progress is how far one key of a rule is towards its threshold.
type Progress struct {
	Rule      string        `json:"rule"`
	Key       string        `json:"key"` // "ip 203.0.113.7", "user alice", "ip 203.0.113.7 user alice", "all"
	Count     int           `json:"count"`
	Threshold int           `json:"threshold"`
	Window    time.Duration `json:"window"`
}

// SignalDecision is one decision the policy made, and its enforcement.
type SignalDecision struct {
	Decision
	Enforced *Outcome `json:"enforced,omitempty"` // what enforcing it did
	Error    *Error   `json:"error,omitempty"`    // why enforcing it was refused
}

// Decision is one thing parry decided to do, with its cause
// (response.Decision on the wire).
type Decision struct {
	ID      string          `json:"id"`
	Action  string          `json:"action"`
	Targets []netip.Prefix  `json:"targets,omitempty"`
	Until   time.Time       `json:"until,omitzero"`
	Reason  string          `json:"reason,omitempty"`
	Source  string          `json:"source,omitempty"`
	Origin  string          `json:"origin,omitempty"`
	Rule    string          `json:"rule,omitempty"`
	Sender  string          `json:"sender,omitempty"`
	Cause   json.RawMessage `json:"cause,omitempty"` // the signals that triggered it, as the daemon sent them
	Allow   []netip.Prefix  `json:"allow,omitempty"`
	Isolate bool            `json:"isolate,omitempty"`
	DryRun  bool            `json:"dry_run,omitempty"`
}

// IntegrityStatus is the answer to op integrity_status.
type IntegrityStatus struct {
	Roots             []string      `json:"roots"`
	Running           bool          `json:"running"`
	Watches           int           `json:"watches"`
	WatchFailures     int           `json:"watch_failures"`
	BaselineDigest    string        `json:"baseline_digest,omitempty"`
	BaselineTime      time.Time     `json:"baseline_time,omitzero"`
	BaselineEntries   int           `json:"baseline_entries"`
	LastScan          time.Time     `json:"last_scan,omitzero"`
	LastScanTook      time.Duration `json:"last_scan_took_ns"`
	LastScanFast      bool          `json:"last_scan_fast"` // the last check re-read only what changed by its metadata
	LastFullScan      time.Time     `json:"last_full_scan,omitzero"`
	Events            uint64        `json:"events"`
	Overflows         int           `json:"overflows"`
	Rescans           int           `json:"rescans"`
	Hash              string        `json:"hash"`
	Open              []Finding     `json:"open"`
	MaxOpenFindings   int           `json:"max_open_findings"`  // integrity.max_open_findings
	OpenDropped       uint64        `json:"open_dropped"`       // reported but not kept open: the bound was reached
	Aggregated        uint64        `json:"aggregated"`         // folded into burst findings since the baseline
	Copies            int           `json:"copies"`             // files whose accepted content is kept for diffs
	CopiesBytes       int64         `json:"copies_bytes"`       // their compressed size
	CopiesDropped     uint64        `json:"copies_dropped"`     // dropped since start to stay under the bound
	Attribution       string        `json:"attribution"`        // off, on, or unavailable: why
	AttributionEvents uint64        `json:"attribution_events"` // fanotify events read
	Enabled           bool          `json:"enabled"`
	Error             string        `json:"not_watching,omitempty"` // why the watcher is not running ("error" is the protocol's)
	DroppedSignals    int           `json:"dropped_signals,omitempty"`
}

// Finding is one thing the integrity watcher or a check noticed
// (integrity.Finding on the wire).
type Finding struct {
	Time        time.Time `json:"time"`
	Kind        string    `json:"kind"`
	Severity    string    `json:"severity"`
	Path        string    `json:"path"`
	Changes     []Change  `json:"changes,omitempty"`
	Rule        string    `json:"rule,omitempty"`        // permission: the rule's path glob
	Package     string    `json:"package,omitempty"`     // package_update: the dpkg package
	Remediation string    `json:"remediation,omitempty"` // what was put back, if anything
	Count       int       `json:"count,omitempty"`       // burst: files aggregated into this finding in its interval
	Detail      string    `json:"detail"`
	Diff        []string  `json:"diff,omitempty"`         // unified diff hunks from the accepted content (integrity.diff)
	DiffOmitted int       `json:"diff_omitted,omitempty"` // diff lines left off
	ContentNote string    `json:"content_note,omitempty"` // why a selected file's content change has no diff
	Actor       *Actor    `json:"actor,omitempty"`        // the process behind the change (integrity.attribution)
}

// Actor is the process behind an integrity change (integrity.Actor on the
// wire). Exe, Cmdline, User and Unit come from the process: hostile text.
type Actor struct {
	PID          int32         `json:"pid"`
	Exited       bool          `json:"exited,omitempty"`
	Exe          string        `json:"exe,omitempty"`
	Cmdline      string        `json:"cmdline,omitempty"`
	UID          uint32        `json:"uid"`
	User         string        `json:"user,omitempty"`
	LoginUID     int64         `json:"login_uid"` // -1: unset
	LoginUser    string        `json:"login_user,omitempty"`
	Session      string        `json:"session,omitempty"`
	Unit         string        `json:"unit,omitempty"`
	Remote       string        `json:"remote,omitempty"`        // remote host of the login session
	LoginService string        `json:"login_service,omitempty"` // its PAM service (sshd, login ...)
	Parents      []ActorParent `json:"parents,omitempty"`
	Event        string        `json:"event"`
	Time         time.Time     `json:"time"`
}

// ActorParent is one ancestor of an Actor.
type ActorParent struct {
	PID int32  `json:"pid"`
	Exe string `json:"exe,omitempty"`
}

// Change is one attribute of a finding that differs: Old → New.
type Change struct {
	Attr string `json:"attr"`
	Old  string `json:"old"`
	New  string `json:"new"`
}

// IntegrityCheck is the answer to op integrity_check.
type IntegrityCheck struct {
	Clean    bool          `json:"clean"`
	Findings []Finding     `json:"findings"`
	TookNs   time.Duration `json:"took_ns"`
}

// BaselineResult is the answer to op integrity_baseline.
type BaselineResult struct {
	Digest     string        `json:"digest"`
	Entries    int           `json:"entries"`
	Unreadable []string      `json:"unreadable,omitempty"`
	Took       time.Duration `json:"took_ns"`
}

// String is the actor in one line, "" for nil: "pid 4242
// /usr/bin/vim.basic (uid 0 root, login uid 1000 alice, sshd session from
// 198.51.100.4, unit session-7.scope, parent pid 4200 /usr/bin/bash)".
// It is the process's own text: escape it before it reaches a terminal.
func (a *Actor) String() string {
	if a == nil {
		return ""
	}
	if a.Exited {
		return fmt.Sprintf("pid %d (exited before it could be identified)", a.PID)
	}
	s := fmt.Sprintf("pid %d %s (uid %d", a.PID, cmp.Or(a.Exe, "-"), a.UID)
	if a.User != "" {
		s += " " + a.User
	}
	if a.LoginUID >= 0 && a.LoginUID != int64(a.UID) {
		s += fmt.Sprintf(", login uid %d", a.LoginUID)
		if a.LoginUser != "" {
			s += " " + a.LoginUser
		}
	}
	if a.Remote != "" {
		s += ", " + cmp.Or(a.LoginService, "login") + " session from " + a.Remote
	}
	if a.Unit != "" {
		s += ", unit " + a.Unit
	}
	if len(a.Parents) > 0 {
		s += fmt.Sprintf(", parent pid %d %s", a.Parents[0].PID, cmp.Or(a.Parents[0].Exe, "-"))
	}
	return s + ")"
}

// ContentText is what changed in a file's content, as one text for
// evidence and reports: the diff lines (with how many were left off), or
// the note saying why there is no diff.
func ContentText(diff []string, omitted int, note string) string {
	if len(diff) == 0 {
		return note
	}
	s := strings.Join(diff, "\n")
	if omitted > 0 {
		s += fmt.Sprintf("\n… %d more lines", omitted)
	}
	return s
}
