// Package report turns parry's audit log into an incident report: blocks
// and unblocks, signals by kind and sender, top sources, lockdowns,
// integrity findings, evidence captured, and whether the audit chain
// verified. It reads the log's JSON lines itself and renders text,
// Markdown (for pasting into a ticket) or JSON. It is pure: the caller
// passes the lines, the window and the chain verification result.
package report

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/parryhq/parry/agent/api"
)

// MaxLine bounds one audit line; longer ones are skipped and counted.
const MaxLine = 4 << 20

// Line is one audit log line, in the agent's format:
//
//	{"seq":7,"time":"...","event":"block","fields":{...},"prev":"...","hash":"..."}
type Line struct {
	Seq    uint64    `json:"seq"`
	Time   time.Time `json:"time"`
	Event  string    `json:"event"`
	fields fields    // the fields the report reads, decoded in the same pass
}

// lineJSON decodes a line and its fields in one pass.
type lineJSON struct {
	Seq    uint64    `json:"seq"`
	Time   time.Time `json:"time"`
	Event  string    `json:"event"`
	Fields fields    `json:"fields"`
}

// Lines is what Read returns: the lines in the window and what was skipped.
type Lines struct {
	Lines []Line
	Skipped
}

// Skipped counts the lines Scan did not hand on.
type Skipped struct {
	Malformed int // lines that were not audit JSON, or too long
	Before    int // lines older than the window
}

// Read parses audit lines from r, keeping those with from <= time < to
// (zero bounds are open). For big logs prefer Summarize, which streams.
func Read(r io.Reader, from, to time.Time) (Lines, error) {
	var out Lines
	sk, err := Scan(r, from, to, func(l Line) { out.Lines = append(out.Lines, l) })
	out.Skipped = sk
	return out, err
}

// Scan parses audit lines from r and calls each for those with
// from <= time < to, in order. Lines before from are skipped without a
// JSON decode (their time is read from the line's head).
func Scan(r io.Reader, from, to time.Time, each func(Line)) (Skipped, error) {
	var sk Skipped
	br := bufio.NewReaderSize(r, 64<<10)
	for {
		raw, err := readLine(br)
		if len(raw) > 0 {
			if t, ok := quickTime(raw); ok && !from.IsZero() && t.Before(from) {
				sk.Before++
			} else {
				var l lineJSON
				switch {
				case json.Unmarshal(raw, &l) != nil, l.Event == "", l.Time.IsZero():
					sk.Malformed++
				case !from.IsZero() && l.Time.Before(from):
					sk.Before++
				case !to.IsZero() && !l.Time.Before(to):
				default:
					each(Line{Seq: l.Seq, Time: l.Time, Event: l.Event, fields: l.Fields})
				}
			}
		}
		if errors.Is(err, errTooLong) {
			sk.Malformed++
			continue
		}
		if errors.Is(err, io.EOF) {
			return sk, nil
		}
		if err != nil {
			return sk, fmt.Errorf("read audit log: %w", err)
		}
	}
}

var errTooLong = errors.New("line too long")

// quickTime reads the "time" of an audit line from its first bytes, where
// the agent writes it ({"seq":N,"time":"..."), without decoding the line.
func quickTime(raw []byte) (time.Time, bool) {
	head := raw[:min(len(raw), 96)]
	i := bytes.Index(head, []byte(`"time":"`))
	if i < 0 {
		return time.Time{}, false
	}
	rest := head[i+len(`"time":"`):]
	j := bytes.IndexByte(rest, '"')
	if j < 0 {
		return time.Time{}, false
	}
	t, err := time.Parse(time.RFC3339Nano, string(rest[:j]))
	return t, err == nil
}

// readLine returns one line without its newline, skipping the rest of a
// line longer than MaxLine (errTooLong).
func readLine(br *bufio.Reader) ([]byte, error) {
	var buf []byte
	for {
		chunk, err := br.ReadSlice('\n')
		if len(buf)+len(chunk) > MaxLine {
			for errors.Is(err, bufio.ErrBufferFull) {
				_, err = br.ReadSlice('\n')
			}
			if err != nil && !errors.Is(err, io.EOF) {
				return nil, err
			}
			return nil, errTooLong
		}
		buf = append(buf, chunk...)
		if errors.Is(err, bufio.ErrBufferFull) {
			continue
		}
		return bytes.TrimRight(buf, "\r\n"), err
	}
}

// The report's types are the protocol's (agent/api), so that the CLI
// renders them without linking the builder.
type (
	// Report is the summary of one window of the audit log.
	Report = api.Report
	// Totals are the counts in the window.
	Totals = api.ReportTotals
	// Action is one block, unblock, refusal, lockdown or release.
	Action = api.ReportAction
	// Count is a key and how often it occurred.
	Count = api.ReportCount
	// Source is a remote address and what it caused.
	Source = api.ReportSource
	// Finding is one integrity finding.
	Finding = api.ReportFinding
	// Ev is one evidence snapshot.
	Ev = api.ReportEvidence
	// Chain is the audit chain verification result, as the agent reports it.
	Chain = api.AuditChain
	// Series is what happened in each step of the window.
	Series = api.ReportSeries
)
