package control

import (
	"bytes"
	"encoding/json"
	"errors"
	"maps"
	"testing"

	"github.com/parryhq/parry/agent/api"
)

// refDecode is the reference for decodeRequest: the whole line into a map
// (what decodeRequest did before it learnt to split the line in one pass).
func refDecode(line []byte) (op string, id json.RawMessage, params map[string]json.RawMessage, code string) {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(bytes.TrimSpace(line), &m); err != nil || m == nil {
		return "", nil, nil, api.CodeBadRequest
	}
	if v, ok := m["id"]; ok {
		delete(m, "id")
		if len(v) > 128 || (v[0] != '"' && (v[0] < '0' || v[0] > '9') && v[0] != '-') {
			return "", nil, nil, api.CodeBadRequest
		}
		id = v
	}
	v, ok := m["op"]
	delete(m, "op")
	if !ok || v[0] != '"' || json.Unmarshal(v, &op) != nil { // null is refused too
		return "", id, m, api.CodeBadRequest
	}
	return op, id, m, ""
}

func decodedParams(t *testing.T, c *Call) map[string]json.RawMessage {
	m := map[string]json.RawMessage{}
	for _, p := range c.params {
		var k string
		if err := json.Unmarshal(p.rawKey, &k); err != nil || k != string(p.key) {
			t.Fatalf("key %s unquoted as %q (%v)", p.rawKey, p.key, err)
		}
		m[k] = p.raw
	}
	return m
}

var requestSeeds = []string{
	`{"op":"ping"}`, `{"op":"signal","kind":"auth_failure","ip":"203.0.113.7","source":"webapp"}`,
	` { "op" : "signal" , "id" : 7 , "kind" : "x\"y" , "attrs" : {"a":"}","b":["]"]} } `,
	`{"op":"block","targets":["203.0.113.7"],"for":"1h","targets":["198.51.100.1"]}`,
	`{"o\u0070":"p\u0069ng","\u0069d":"a"}`, `{"op":1}`, `{"op":null}`, `{"id":true,"op":"ping"}`,
	`{}`, `{"id":-1.5e3}`, `null`, `[]`, `"op"`, `{`, `{"op":"ping"} {}`, `{"op":"ping",}`, ``,
	`{"op":"list","x":[{"y":[1,2,{"z":"\\"}]}],"w":false,"v":-0.1}`,
}

// FuzzDecodeRequest: decodeRequest agrees with decoding into a map on the
// op, the id, the parameters and whether the line is refused.
func FuzzDecodeRequest(f *testing.F) {
	for _, s := range requestSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, line []byte) {
		op, id, params, code := refDecode(line)
		c, err := DecodeRequest(line)
		var e *api.Error
		switch {
		case code != "":
			if !errors.As(err, &e) || e.Code != code {
				t.Fatalf("%q: want %s, got %v", line, code, err)
			}
			if c != nil && !bytes.Equal(c.ID, id) {
				t.Fatalf("%q: id %s, want %s", line, c.ID, id)
			}
			return
		case err != nil:
			t.Fatalf("%q: %v", line, err)
		}
		if c.Op != op || !bytes.Equal(c.ID, id) {
			t.Fatalf("%q: op %q id %s, want %q %s", line, c.Op, c.ID, op, id)
		}
		if got := decodedParams(t, c); !maps.EqualFunc(got, params, func(a, b json.RawMessage) bool { return bytes.Equal(a, b) }) {
			t.Fatalf("%q: params %q, want %q", line, got, params)
		}
	})
}
