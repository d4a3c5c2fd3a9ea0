package api

import (
	"encoding/json"
	"time"
)

// SourceStatus is one log source in the answer of op source_status and in
// status (docs/sources.md).
type SourceStatus struct {
	Name      string   `json:"name"` // "journal", or a file source's name
	Kind      string   `json:"kind"` // "journal" or "file"
	Path      string   `json:"path,omitempty"`
	Detectors []string `json:"detectors"` // the detectors it feeds
	// Available: journalctl is running, or the file is open.
	Available   bool                         `json:"available"`
	Lines       uint64                       `json:"lines"`   // lines (journal entries) read
	Matched     uint64                       `json:"matched"` // lines that became a signal
	Ignored     uint64                       `json:"ignored"`
	Missed      uint64                       `json:"missed"`
	Refused     uint64                       `json:"refused"`                // matched, but the address was invalid or the line cut
	Cut         uint64                       `json:"cut"`                    // lines longer than the bound, cut
	Dropped     uint64                       `json:"dropped"`                // journal lines not decodable or too long
	Replayed    uint64                       `json:"replayed"`               // lines read back after a restart (counted, never decided again)
	Decisions   uint64                       `json:"decisions"`              // signals that led to a decision
	Restarts    uint64                       `json:"restarts"`               // journalctl restarts
	Rotations   uint64                       `json:"rotations"`              // file rotations and truncations followed
	Lost        uint64                       `json:"lost,omitempty"`         // resumes whose saved file was gone
	LastLine    time.Time                    `json:"last_line,omitzero"`     // when the last line was read
	Lag         string                       `json:"lag,omitempty"`          // journal: read time minus the entry's time, of the last entry
	Error       string                       `json:"error,omitempty"`        // why it is not available, or the last read error
	Warning     string                       `json:"warning,omitempty"`      // silent for longer than silent_after, or its match selects nothing
	Position    json.RawMessage              `json:"position,omitempty"`     // where it resumes after a restart
	PerDetector map[string]map[string]uint64 `json:"per_detector,omitempty"` // detector → outcome → lines
}

// SourcesStatus is the answer of op source_status.
type SourcesStatus struct {
	Sources []SourceStatus `json:"sources"`
}

// SourcesSummary is the sources' part of status: how many run, and what
// is wrong with any of them.
type SourcesSummary struct {
	Count    int      `json:"count"`
	Warnings []string `json:"warnings,omitempty"` // one per unavailable or silent source
}
