package control

import (
	"bytes"
	"encoding/json"
	"iter"
	"unicode/utf8"

	"github.com/parryhq/parry/agent/api"
)

// Call is one decoded request: its op, its optional id (echoed in the
// response), the peer that sent it, and its parameters. The parameters'
// bytes point into the request line: a Call lives only while its line is
// being answered.
type Call struct {
	Op     string
	ID     json.RawMessage
	Peer   Peer
	params []param
	inline [6]param // params' backing array for the usual request
	stream Stream   // the op's answer goes on (stream.go)
}

// param is one top-level member of a request other than op and id.
type param struct {
	key    []byte // unquoted name
	rawKey []byte // the name as sent, quoted
	raw    []byte // the value as sent (valid JSON)
}

// Params yields the call's parameters in the order sent: each member's
// name (unquoted) and its value as sent (valid JSON). The bytes point into
// the request line. For ops that decode faster than Decode (signal).
func (c *Call) Params() iter.Seq2[[]byte, []byte] {
	return func(yield func(key, raw []byte) bool) {
		for _, p := range c.params {
			if !yield(p.key, p.raw) {
				return
			}
		}
	}
}

func (c *Call) rawID() json.RawMessage {
	if c == nil {
		return nil
	}
	return c.ID
}

// DecodeRequest parses one request line: a JSON object with a string "op"
// and an optional "id" (string or number, echoed back). The line is
// checked as JSON once and then split into its members in one pass, with
// no map and no copy of the values; a repeated member counts as its last
// occurrence, as with encoding/json.
func DecodeRequest(line []byte) (*Call, error) {
	return decodeRequestInto(new(Call), line)
}

// decodeRequestInto is DecodeRequest into c, which it resets first (a
// connection reuses one Call for all its requests).
func decodeRequestInto(c *Call, line []byte) (*Call, error) {
	*c = Call{}
	line = bytes.TrimSpace(line)
	if len(line) == 0 || line[0] != '{' || !json.Valid(line) {
		var m map[string]json.RawMessage
		err := json.Unmarshal(line, &m) // for its message; nil for null
		return nil, api.Errorf(api.CodeBadRequest, "request is not a JSON object on one line: %s", shortErr(err))
	}
	c.params = c.inline[:0]
	var op []byte
	for i := skipSpace(line, 1); line[i] != '}'; {
		kEnd := skipString(line, i)
		rawKey := line[i:kEnd]
		key := rawKey[1 : len(rawKey)-1]
		if !PlainString(key) {
			var s string
			if err := json.Unmarshal(rawKey, &s); err != nil {
				return nil, api.Errorf(api.CodeBadRequest, "request: bad member name: %s", shortErr(err))
			}
			key = []byte(s)
		}
		v := skipSpace(line, skipSpace(line, kEnd)+1) // past the colon
		vEnd := skipValue(line, v)
		switch raw := line[v:vEnd]; string(key) {
		case "id":
			c.ID = raw
		case "op":
			op = raw
		default:
			c.params = append(c.params, param{key: key, rawKey: rawKey, raw: raw})
		}
		if i = skipSpace(line, vEnd); line[i] == ',' {
			i = skipSpace(line, i+1)
		}
	}
	if id := c.ID; id != nil && (len(id) > 128 || (id[0] != '"' && (id[0] < '0' || id[0] > '9') && id[0] != '-')) {
		return nil, api.Errorf(api.CodeBadRequest, `"id" must be a string or number of at most 128 bytes`)
	}
	if op == nil {
		return c, api.Errorf(api.CodeBadRequest, `request has no "op"`)
	}
	if op[0] != '"' {
		return c, api.Errorf(api.CodeBadRequest, `"op" must be a string`)
	}
	if PlainString(op[1 : len(op)-1]) {
		c.Op = string(op[1 : len(op)-1])
	} else if err := json.Unmarshal(op, &c.Op); err != nil {
		return c, api.Errorf(api.CodeBadRequest, `"op" must be a string`)
	}
	return c, nil
}

// plainString reports whether the inside of a JSON string literal means
// itself: no escapes and valid UTF-8 (which encoding/json would replace).
func PlainString(b []byte) bool {
	return bytes.IndexByte(b, '\\') < 0 && utf8.Valid(b)
}

// The skip functions walk JSON already checked by json.Valid: they return
// the index just past the whitespace, string or value starting at i.

func skipSpace(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	return i
}

func skipString(b []byte, i int) int {
	for i++; i < len(b); i++ {
		switch b[i] {
		case '\\':
			i++
		case '"':
			return i + 1
		}
	}
	return i
}

func skipValue(b []byte, i int) int {
	switch b[i] {
	case '"':
		return skipString(b, i)
	case '{', '[':
		depth := 0
		for i < len(b) {
			switch b[i] {
			case '"':
				i = skipString(b, i)
				continue
			case '{', '[':
				depth++
			case '}', ']':
				if depth--; depth == 0 {
					return i + 1
				}
			}
			i++
		}
		return i
	}
	for i < len(b) && b[i] != ',' && b[i] != '}' && b[i] != ']' && b[i] != ' ' && b[i] != '\t' && b[i] != '\n' && b[i] != '\r' {
		i++
	}
	return i
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
// wrong types are a bad_request error naming the field. The parameters
// are copied out as sent (no re-encoding) into one object for the decoder.
func (c *Call) Decode(v any) error {
	if len(c.params) == 0 {
		return nil
	}
	n := 2
	for _, p := range c.params {
		n += len(p.rawKey) + len(p.raw) + 2
	}
	b := make([]byte, 0, n)
	for i, p := range c.params {
		b = append(b, ',')
		if i == 0 {
			b[0] = '{'
		}
		b = append(append(append(b, p.rawKey...), ':'), p.raw...)
	}
	b = append(b, '}')
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return api.Errorf(api.CodeBadRequest, "op %s: %s", c.Op, shortErr(err))
	}
	return nil
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}
