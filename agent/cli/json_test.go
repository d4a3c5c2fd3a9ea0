package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"strings"
	"testing"
)

func TestPrintResultPutsOKFirst(t *testing.T) {
	for _, c := range []struct {
		ok   bool
		v    any
		want string
	}{
		{true, struct {
			Outcome string `json:"outcome"`
		}{"counted"}, `{"ok":true,"outcome":"counted"}`},
		{false, map[string]int{"n": 1}, `{"ok":false,"n":1}`},
		{true, struct{}{}, `{"ok":true}`},
		{true, map[string]bool{"ok": false}, `{"ok":false}`}, // an answer's own ok stays
	} {
		var b bytes.Buffer
		if err := printResult(&b, c.ok, c.v); err != nil {
			t.Fatal(err)
		}
		var compact bytes.Buffer
		if err := json.Compact(&compact, b.Bytes()); err != nil {
			t.Fatal(err)
		}
		if compact.String() != c.want {
			t.Errorf("printResult(%v, %#v) = %s, want %s", c.ok, c.v, compact.String(), c.want)
		}
	}
	if err := printResult(io.Discard, true, []int{1}); err == nil {
		t.Error("an array was printed as a result")
	}
}

// TestJSONFailureIsAnObject: a --json command that cannot reach parryd
// still prints one object with ok false, and exits 1.
func TestJSONFailureIsAnObject(t *testing.T) {
	for _, args := range [][]string{{"status", "--json"}, {"signal", "x", "--json"}, {"report", "--format", "json"},
		{"block", "203.0.113.7", "--json"}, {"evidence", "list", "--json"}} {
		var stdout, stderr bytes.Buffer
		code := Main(context.Background(), append([]string{"--socket", "/nonexistent/s.sock"}, args...), strings.NewReader(""), &stdout, &stderr)
		var got jsonFailure
		if err := json.Unmarshal(stdout.Bytes(), &got); err != nil || got.OK || got.Error.Message == "" || code != ExitFailed {
			t.Errorf("parry %v: exit %d, stdout %q (%v)", args, code, stdout.String(), err)
		}
	}
	// Without --json, stdout stays empty.
	var stdout bytes.Buffer
	Main(context.Background(), []string{"--socket", "/nonexistent/s.sock", "status"}, strings.NewReader(""), &stdout, io.Discard)
	if stdout.Len() != 0 {
		t.Errorf("status without --json printed %q", stdout.String())
	}
}
