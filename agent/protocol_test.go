package agent

import (
	"bytes"
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/parryhq/parry/agent/api"
	"github.com/parryhq/parry/agent/control"
	"github.com/parryhq/parry/response"
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

func TestCallDecodeStrict(t *testing.T) {
	c, err := control.DecodeRequest([]byte(`{"op":"block","targets":["203.0.113.7"],"for":"1h","bogus":1}`))
	if err != nil {
		t.Fatal(err)
	}
	var p blockParams
	var e *api.Error
	if err := c.Decode(&p); !errors.As(err, &e) || e.Code != api.CodeBadRequest {
		t.Fatalf("unknown field: got %v", err)
	}
	c, _ = control.DecodeRequest([]byte(`{"op":"block","targets":["203.0.113.7"],"for":"1h","targets":["198.51.100.1"]}`))
	if err := c.Decode(&p); err != nil || len(p.Targets) != 1 || p.Targets[0] != "198.51.100.1" || p.For != "1h" {
		t.Fatalf("got %+v %v", p, err)
	}
	c, _ = control.DecodeRequest([]byte(`{"op":"signal","kind":"k","bogus":"x"}`))
	if _, err := decodeSignal(c); !errors.As(err, &e) || e.Code != api.CodeBadRequest {
		t.Fatalf("signal unknown field: got %v", err)
	}
}

var benchSignal = []byte(`{"op":"signal","id":42,"kind":"auth_failure","ip":"203.0.113.7","user":"alice","source":"webapp"}` + "\n")

// BenchmarkDecodeRequest: decoding one signal request, the one-pass
// splitter against the map it replaced (Run: go test ./agent -run '^$'
// -bench DecodeRequest -benchmem).
func BenchmarkDecodeRequest(b *testing.B) {
	b.Run("impl=onepass", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			c, err := control.DecodeRequest(benchSignal)
			if err != nil {
				b.Fatal(err)
			}
			if _, err := decodeSignal(c); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("impl=map", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, _, m, code := refDecode(benchSignal); code != "" || len(m) != 4 {
				b.Fatal(code)
			}
		}
	})
}

// TestOkLineSignalResult: the hand-rendered answer to a signal is byte for
// byte what encoding/json writes.
func TestOkLineSignalResult(t *testing.T) {
	for _, r := range []SignalResult{
		{Outcome: response.OutcomeNoRule},
		{Outcome: response.OutcomeCounted, Progress: []response.Progress{{Rule: "auth_failure", Key: "ip 203.0.113.7", Count: 3, Threshold: 5, Window: 15 * time.Minute}}},
		{Outcome: response.OutcomeCounted, Progress: []response.Progress{{Rule: "a", Key: "all", Count: 1, Threshold: 2, Window: time.Second}, {Rule: "b<&>", Key: "user \"é\"\n", Count: -1}}},
		{Outcome: response.OutcomeDecided, Decisions: []SignalDecision{{Decision: response.Decision{Action: response.ActionBlock}}}},
	} {
		for _, id := range []json.RawMessage{nil, json.RawMessage(`"x"`)} {
			got := control.OKLine(id, r)
			b, _ := json.Marshal(r)
			want := `{"ok":true`
			if id != nil {
				want += `,"id":` + string(id)
			}
			want += "," + string(b[1:]) + "\n"
			if string(got) != want {
				t.Errorf("okLine:\n got %s\nwant %s", got, want)
			}
		}
	}
}

// TestSignalBatchJSON: the hand-rendered audit batch is byte for byte
// what encoding/json writes for the same fields.
func TestSignalBatchJSON(t *testing.T) {
	type plain signalBatchRecord // the same fields without MarshalJSON
	now := time.Date(2026, 11, 27, 1, 2, 3, 4005, time.UTC)
	for _, r := range []signalBatchRecord{
		{},
		{Count: 1, Signals: []signalRecord{{Kind: "auth_failure", IP: "203.0.113.7", Sender: "uid=0(root) pid=1", Outcome: "counted", Time: now}}},
		{Count: 2, Signals: []signalRecord{
			{Kind: "k<&>\u2028", User: "é\"\\\n", Source: "s", Severity: "high", Path: "/etc/x", Detail: "d\x00\xff",
				Attrs: map[string]string{"b": "2", "a": "<1>"}, Sender: "x", Outcome: "no_rule", Time: now.Add(time.Hour)},
			{Kind: "k", Time: time.Time{}},
		}},
	} {
		got, err := json.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		want, _ := json.Marshal(plain(r))
		if string(got) != string(want) {
			t.Errorf("batch:\n got %s\nwant %s", got, want)
		}
	}
}
