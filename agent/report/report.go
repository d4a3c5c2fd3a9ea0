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
)

// MaxLine bounds one audit line; longer ones are skipped and counted.
const MaxLine = 4 << 20

// Line is one audit log line, in the agent's format:
//
//	{"seq":7,"time":"...","event":"block","fields":{...},"prev":"...","hash":"..."}
type Line struct {
	Seq    uint64          `json:"seq"`
	Time   time.Time       `json:"time"`
	Event  string          `json:"event"`
	Fields json.RawMessage `json:"fields"`
}

// Lines is what Read returns: the lines in the window and what was skipped.
type Lines struct {
	Lines     []Line
	Malformed int // lines that were not audit JSON, or too long
	Before    int // lines older than the window
}

// Read parses audit lines from r, keeping those with from <= time < to
// (zero bounds are open).
func Read(r io.Reader, from, to time.Time) (Lines, error) {
	var out Lines
	br := bufio.NewReaderSize(r, 64<<10)
	for {
		raw, err := readLine(br)
		if len(raw) > 0 {
			var l Line
			switch {
			case json.Unmarshal(raw, &l) != nil, l.Event == "", l.Time.IsZero():
				out.Malformed++
			case !from.IsZero() && l.Time.Before(from):
				out.Before++
			case !to.IsZero() && !l.Time.Before(to):
			default:
				out.Lines = append(out.Lines, l)
			}
		}
		if errors.Is(err, errTooLong) {
			out.Malformed++
			continue
		}
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return out, fmt.Errorf("read audit log: %w", err)
		}
	}
}

var errTooLong = errors.New("line too long")

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

// Chain is the audit chain verification result, as the agent reports it.
type Chain struct {
	Checked  bool   `json:"checked"`             // false: verification was not run
	OK       bool   `json:"ok"`                  //
	Lines    int    `json:"lines"`               // lines verified
	FirstBad int    `json:"first_bad,omitempty"` // 1-based line of the first break
	Reason   string `json:"reason,omitempty"`    //
}
