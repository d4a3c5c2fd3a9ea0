package api

import (
	"encoding/json"
	"slices"
	"strings"
)

// The event stream (op "events", `parry events`): the audit log's lines as
// they are appended, each as an Event, with a kind that groups event names
// for filtering (docs/protocol.md, "events").

// Event kinds. A kind is a set of audit event names (KindOf).
const (
	KindBlock     = "block"     // block
	KindUnblock   = "unblock"   // unblock, expire
	KindRefuse    = "refuse"    // refuse (a request or decision refused), sender_block_cap, sender_block_cap_end
	KindSignal    = "signal"    // signals (a batch of signal records)
	KindThreshold = "threshold" // signals batches in which a signal crossed a threshold (outcome "decided")
	KindFinding   = "finding"   // integrity_finding, integrity_baseline_tampered
	KindIntegrity = "integrity" // integrity_baseline, integrity_accept
	KindLockdown  = "lockdown"  // lockdown
	KindRelease   = "release"   // release
	KindSource    = "source"    // source health: every event named source_*
	KindHeal      = "heal"      // reconcile (table rebuilt or re-asserted)
	KindIncident  = "incident"  // evidence, block_connections, notify
	KindFleet     = "fleet"     // fleet_*
	KindAudit     = "audit"     // audit_*, segment_start, segment_removed
	KindDaemon    = "daemon"    // start, stop, config_reload, uninstall_rules, own_address
	KindOther     = "other"     // anything else (a dry run's "log", an event newer than this table)
)

// EventKinds lists every kind, in the order docs/protocol.md gives them.
var EventKinds = []string{KindBlock, KindUnblock, KindRefuse, KindSignal, KindThreshold, KindFinding, KindIntegrity,
	KindLockdown, KindRelease, KindSource, KindHeal, KindIncident, KindFleet, KindAudit, KindDaemon, KindOther}

var eventKind = map[string]string{
	"block": KindBlock, "unblock": KindUnblock, "expire": KindUnblock,
	"refuse": KindRefuse, "sender_block_cap": KindRefuse, "sender_block_cap_end": KindRefuse,
	"signals":           KindSignal,
	"integrity_finding": KindFinding, "integrity_baseline_tampered": KindFinding,
	"integrity_baseline": KindIntegrity, "integrity_accept": KindIntegrity,
	"lockdown": KindLockdown, "release": KindRelease,
	"reconcile": KindHeal,
	"evidence":  KindIncident, "block_connections": KindIncident, "notify": KindIncident,
	"segment_start": KindAudit, "segment_removed": KindAudit,
	"start": KindDaemon, "stop": KindDaemon, "config_reload": KindDaemon, "uninstall_rules": KindDaemon, "own_address": KindDaemon,
}

// KindOf is the kind of an audit event name. A "signals" event is
// KindSignal; whether it is also KindThreshold depends on its fields
// (CrossedThreshold).
func KindOf(event string) string {
	if k, ok := eventKind[event]; ok {
		return k
	}
	for prefix, k := range map[string]string{"source_": KindSource, "fleet_": KindFleet, "audit_": KindAudit} {
		if strings.HasPrefix(event, prefix) {
			return k
		}
	}
	return KindOther
}

// CrossedThreshold reports whether the fields of a "signals" event hold a
// signal that made a rule fire (outcome "decided").
func CrossedThreshold(fields json.RawMessage) bool {
	var f struct {
		Signals []struct {
			Outcome string `json:"outcome"`
		} `json:"signals"`
	}
	if json.Unmarshal(fields, &f) != nil {
		return false
	}
	for _, s := range f.Signals {
		if s.Outcome == "decided" {
			return true
		}
	}
	return false
}

// ParseKinds checks a list of kinds (op events' "kinds", `--kind`); empty
// means every kind.
func ParseKinds(kinds []string) ([]string, error) {
	out := make([]string, 0, len(kinds))
	for _, k := range kinds {
		k = strings.TrimSpace(k)
		if k == "" {
			continue
		}
		if !slices.Contains(EventKinds, k) {
			return nil, Errorf(CodeBadRequest, "unknown event kind %q; kinds: %s", truncKind(k), strings.Join(EventKinds, ", "))
		}
		if !slices.Contains(out, k) {
			out = append(out, k)
		}
	}
	return out, nil
}

func truncKind(s string) string {
	if len(s) > 32 {
		return s[:32] + "..."
	}
	return s
}

// Event is one line of the event stream: an audit line without its chain
// (prev, hash), with its kind.
type Event struct {
	Seq    uint64          `json:"seq"`
	Time   string          `json:"time"`
	Event  string          `json:"event"`
	Kind   string          `json:"kind"`
	Fields json.RawMessage `json:"fields,omitempty"`
}

// EventsMissed is the stream's line for events it could not deliver: the
// subscriber's queue overflowed (it read too slowly), or it is being
// dropped for not reading at all (Reason "write_timeout", the last line).
// After is the seq of the last event delivered before the gap.
type EventsMissed struct {
	Missed int    `json:"missed"`
	After  uint64 `json:"after_seq"`
	Reason string `json:"reason"`
}

// EventsLive is the stream's line between the replay (if any) and the
// live events: Replayed events came from the audit log, through the line
// with seq After; the events after it are live. A client that wants only
// the replay (`parry events` without --follow) stops here.
type EventsLive struct {
	Live     bool   `json:"live"`
	Replayed int    `json:"replayed"`
	After    uint64 `json:"after_seq"`
}

// EventsEnd is the stream's last line when the daemon ends it.
type EventsEnd struct {
	End string `json:"end"`
}

// EventsAnswer is the answer line of op events, before the stream.
type EventsAnswer struct {
	Stream   string   `json:"stream"`           // "events"
	Seq      uint64   `json:"seq"`              // the audit seq when the subscription began
	Kinds    []string `json:"kinds,omitempty"`  // the filter in force (none: every kind)
	Replay   bool     `json:"replay,omitempty"` // events since Since are replayed from the audit log first
	Since    string   `json:"since,omitempty"`  // RFC 3339
	QueueLen int      `json:"queue_len"`        // the subscriber's bound: events beyond it are missed
}
