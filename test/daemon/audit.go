package daemon

import (
	"encoding/json"
	"os"
	"strings"
	"testing"
)

// AuditEvents reads the audit log at path (hash-chained JSON lines, see
// docs/config.md) and returns the fields of every entry of this event, in
// order. A line that is not an entry (a torn tail) is skipped; a missing
// file fails the test.
func AuditEvents(t testing.TB, path, event string) []map[string]any {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out []map[string]any
	for line := range strings.Lines(string(b)) {
		var e struct {
			Event  string         `json:"event"`
			Fields map[string]any `json:"fields"`
		}
		if json.Unmarshal([]byte(line), &e) == nil && e.Event == event {
			out = append(out, e.Fields)
		}
	}
	return out
}
