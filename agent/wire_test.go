package agent

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/parryhq/parry/agent/api"
	"github.com/parryhq/parry/agent/audit"
	"github.com/parryhq/parry/agent/enforce"
	"github.com/parryhq/parry/agent/evidence"
	"github.com/parryhq/parry/agent/fleet"
	"github.com/parryhq/parry/agent/hostcheck"
	"github.com/parryhq/parry/agent/internal/wirefill"
	"github.com/parryhq/parry/agent/report"
	"github.com/parryhq/parry/integrity"
)

var updateWire = flag.Bool("update-wire", false, "rewrite testdata/wire.golden")

// wireAnswers are the answer types of the control protocol as the daemon
// encodes them, by the names they had before agent/api existed.
func wireAnswers() []struct {
	name string
	v    any
} {
	return []struct {
		name string
		v    any
	}{
		{"Status", new(api.Status)},
		{"BlockInfo", new(api.BlockInfo)},
		{"Health", new(api.Health)},
		{"LockdownState", new(api.LockdownState)},
		{"ChainBreak", new(api.ChainBreak)},
		{"PolicyStatus", new(api.PolicyStatus)},
		{"Error", new(api.Error)},
		{"EvidenceInfo", new(api.EvidenceInfo)},
		{"Outcome", new(enforce.Outcome)},
		{"LockdownResult", new(LockdownResult)},
		{"SignalResult", new(SignalResult)},
		{"IntegrityStatus", new(IntegrityStatus)},
		{"fleet.Status", new(fleet.Status)},
		{"evidence.Record", new(evidence.Record)},
		{"evidence.Snapshot", new(evidence.Snapshot)},
		{"integrity.Finding", new(integrity.Finding)},
		{"integrity.BaselineResult", new(integrity.BaselineResult)},
		{"hostcheck.Report", new(hostcheck.Report)},
		{"report.Report", new(report.Report)},
		{"audit.Result", new(audit.Result)},
		{"FeedList", new(api.FeedList)},
		{"Why", new(api.Why)},
		{"SourcesStatus", new(api.SourcesStatus)},
	}
}

// TestWireUnchanged: every answer type, filled in every field, encodes to
// the JSON in testdata/wire.golden, which was written by the code before
// the protocol's types moved to agent/api. Field names are the protocol
// (docs/protocol.md); a change here breaks every client.
func TestWireUnchanged(t *testing.T) {
	var got bytes.Buffer
	for _, a := range wireAnswers() {
		wirefill.Fill(a.v)
		b, err := json.Marshal(a.v)
		if err != nil {
			t.Fatalf("%s: %v", a.name, err)
		}
		fmt.Fprintf(&got, "%s %s\n", a.name, b)
	}
	golden := filepath.Join("testdata", "wire.golden")
	if *updateWire {
		if err := os.WriteFile(golden, got.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatal(err)
	}
	gl, wl := bytes.Split(got.Bytes(), []byte("\n")), bytes.Split(want, []byte("\n"))
	for i := range max(len(gl), len(wl)) {
		var g, w []byte
		if i < len(gl) {
			g = gl[i]
		}
		if i < len(wl) {
			w = wl[i]
		}
		if !bytes.Equal(g, w) {
			t.Errorf("line %d differs from %s:\n got %s\nwant %s", i+1, golden, g, w)
		}
	}
}

// TestWireTwins: where the daemon answers with a type of its own, the
// CLI's twin in agent/api decodes it and encodes it again to the same
// bytes: no field is lost, renamed or added on the way.
func TestWireTwins(t *testing.T) {
	fs := []integrity.Finding{{}}
	wirefill.Fill(&fs[0])
	for _, c := range []struct {
		name   string
		daemon any // filled unless already set
		twin   any
	}{
		{"Outcome", new(enforce.Outcome), new(api.Outcome)},
		{"LockdownResult", new(LockdownResult), new(api.LockdownResult)},
		{"SignalResult", new(SignalResult), new(api.SignalResult)},
		{"IntegrityStatus", new(IntegrityStatus), new(api.IntegrityStatus)},
		{"integrity.Finding", new(integrity.Finding), new(api.Finding)},
		{"integrity.BaselineResult", new(integrity.BaselineResult), new(api.BaselineResult)},
		{"integrity_check", &map[string]any{"clean": true, "findings": fs, "took_ns": time.Second}, new(api.IntegrityCheck)},
	} {
		if _, isMap := c.daemon.(*map[string]any); !isMap {
			wirefill.Fill(c.daemon)
		}
		want, err := json.Marshal(c.daemon)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if err := json.Unmarshal(want, c.twin); err != nil {
			t.Fatalf("%s: the twin cannot decode the daemon's answer: %v", c.name, err)
		}
		got, err := json.Marshal(c.twin)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%s: the twin in agent/api re-encodes differently:\n got %s\nwant %s", c.name, got, want)
		}
	}
}
