package agent

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/netip"
	"time"
)

// Call is one decoded request: its op, its optional id (echoed in the
// response), the peer that sent it, and its parameters.
type Call struct {
	Op     string
	ID     json.RawMessage
	Peer   Peer
	params map[string]json.RawMessage
}

func (c *Call) rawID() json.RawMessage {
	if c == nil {
		return nil
	}
	return c.ID
}

// decodeRequest parses one request line: a JSON object with a string "op"
// and an optional "id" (string or number, echoed back).
func decodeRequest(line []byte) (*Call, error) {
	line = bytes.TrimSpace(line)
	var m map[string]json.RawMessage
	if err := json.Unmarshal(line, &m); err != nil || m == nil {
		return nil, errorf(CodeBadRequest, "request is not a JSON object on one line: %s", shortErr(err))
	}
	c := &Call{params: m}
	if id, ok := m["id"]; ok {
		delete(m, "id")
		if len(id) > 128 || (id[0] != '"' && (id[0] < '0' || id[0] > '9') && id[0] != '-') {
			return nil, errorf(CodeBadRequest, `"id" must be a string or number of at most 128 bytes`)
		}
		c.ID = id
	}
	op, ok := m["op"]
	if !ok {
		return c, errorf(CodeBadRequest, `request has no "op"`)
	}
	delete(m, "op")
	if err := json.Unmarshal(op, &c.Op); err != nil {
		return c, errorf(CodeBadRequest, `"op" must be a string`)
	}
	return c, nil
}

func shortErr(err error) string {
	if err == nil {
		return "null"
	}
	s := err.Error()
	if len(s) > 200 {
		s = s[:200]
	}
	return s
}

// Decode decodes the call's parameters into v strictly: unknown fields and
// wrong types are a bad_request error naming the field.
func (c *Call) Decode(v any) error {
	if len(c.params) == 0 {
		return nil
	}
	b, err := json.Marshal(c.params)
	if err != nil {
		return errorf(CodeBadRequest, "op %s: %v", c.Op, err)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return errorf(CodeBadRequest, "op %s: %s", c.Op, shortErr(err))
	}
	return nil
}

// parseTargets parses request targets. Without partial, the first bad one
// refuses the request; with it, bad ones are returned as refusals.
func parseTargets(in []string, partial bool) ([]netip.Prefix, []*Error, error) {
	if len(in) == 0 {
		return nil, nil, errorf(CodeBadRequest, `"targets" is empty: give at least one IP or CIDR`)
	}
	out := make([]netip.Prefix, 0, len(in))
	var bad []*Error
	for i, s := range in {
		p, err := ParseTarget(s)
		if err != nil {
			e := &Error{Code: CodeInvalidTarget, Message: fmt.Sprintf("targets[%d]: %v", i, err), Target: truncate(s, 64)}
			if !partial {
				return nil, nil, e
			}
			bad = append(bad, e)
			continue
		}
		out = append(out, p)
	}
	return out, bad, nil
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}

// blockParams are the parameters of op "block".
type blockParams struct {
	Targets   []string `json:"targets"`
	For       string   `json:"for"`       // duration; default config default_block
	Permanent bool     `json:"permanent"` // no expiry; excludes "for"
	Reason    string   `json:"reason"`
	Source    string   `json:"source"`  // who asks, free-form; default "control"
	Partial   bool     `json:"partial"` // apply the acceptable targets, report the rest
}

// until resolves the block's end time (zero: permanent).
func (p *blockParams) until(now time.Time, cfg *Config) (time.Time, error) {
	switch {
	case p.Permanent && p.For != "":
		return time.Time{}, errorf(CodeBadRequest, `give either "for" or "permanent", not both`)
	case p.Permanent:
		return time.Time{}, nil
	case p.For == "":
		return now.Add(cfg.DefaultBlock.D()), nil
	}
	d, err := ParseDuration(p.For)
	if err != nil {
		return time.Time{}, errorf(CodeInvalidDuration, "%v", err)
	}
	if d < time.Second {
		return time.Time{}, errorf(CodeInvalidDuration, `"for" must be at least 1s`)
	}
	if cfg.MaxBlock.D() > 0 && d > cfg.MaxBlock.D() {
		return time.Time{}, errorf(CodeInvalidDuration, "%s is longer than max_block %s", FormatDuration(d), FormatDuration(cfg.MaxBlock.D()))
	}
	if d > 100*365*24*time.Hour {
		return time.Time{}, errorf(CodeInvalidDuration, "%s is too long; use permanent", FormatDuration(d))
	}
	return now.Add(d), nil
}
