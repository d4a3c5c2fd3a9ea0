package agent

import (
	"context"
	"encoding/json"
	"slices"
	"testing"
	"time"
)

// TestEveryOpRefusesUnknownFields sends each registered op (the incident
// and integrity ops included) an unknown member as root: every one answers
// bad_request and nothing changes, whether the op takes parameters or not.
func TestEveryOpRefusesUnknownFields(t *testing.T) {
	fw := newFakeFW()
	d := newTestDaemon(t, testConfig(t), fw, &clock{t: time.Now()})
	if _, err := AttachIncident(d, ""); err != nil {
		t.Fatal(err)
	}
	root := resolvePeer(Peer{UID: 0, GID: 0}, nil)
	ctx := context.Background()
	if w := answer(t, d.handleLine(ctx, root, []byte(`{"op":"block","targets":["203.0.113.7"],"for":"1h"}`))); !w.OK {
		t.Fatalf("block: %+v", w.Error)
	}
	// An unacknowledged chain break, so that audit_ack would change something.
	d.mu.Lock()
	d.chainBreak = &ChainBreak{Time: time.Now().UTC(), Found: "test"}
	d.mu.Unlock()

	ops := make([]string, 0, len(d.ops))
	for name := range d.ops {
		ops = append(ops, name)
	}
	slices.Sort(ops)
	for _, want := range []string{"uninstall_rules", "audit_ack", "integrity_accept", "evidence_capture", "check", "signal"} {
		if !slices.Contains(ops, want) {
			t.Fatalf("op %s is not registered: %v", want, ops)
		}
	}
	wantKernel := fw.state()
	seq := d.audit.Seq()
	for _, op := range ops {
		for _, extra := range []string{`"dry_run":true`, `"confirm":false`, `"zz_unknown":{"a":[1]}`} {
			line := `{"op":"` + op + `","id":7,` + extra + `}`
			w := answer(t, d.handleLine(ctx, root, []byte(line)))
			if w.OK || w.Error.Code != CodeBadRequest {
				t.Errorf("%s: got ok=%v %+v, want bad_request", line, w.OK, w.Error)
			}
			if string(w.ID) != "7" {
				t.Errorf("%s: id %s not echoed", line, w.ID)
			}
		}
	}
	if !fw.present {
		t.Fatal("uninstall_rules with an unknown field removed the table")
	}
	if s := fw.state(); s != wantKernel {
		t.Fatalf("kernel changed: %q, want %q", s, wantKernel)
	}
	if d.AuditBreak() == nil {
		t.Fatal("audit_ack with an unknown field acknowledged the chain break")
	}
	if got := d.audit.Seq(); got != seq {
		t.Fatalf("audit log grew from seq %d to %d", seq, got)
	}
	// Without the extra member the same ops still work.
	if w := answer(t, d.handleLine(ctx, root, []byte(`{"op":"status","id":1}`))); !w.OK {
		t.Fatalf("status: %+v", w.Error)
	}
}

func answer(t *testing.T, line []byte) wireResp {
	t.Helper()
	var w wireResp
	if err := json.Unmarshal(line, &w); err != nil {
		t.Fatalf("response %q: %v", line, err)
	}
	if !w.OK && (w.Error == nil || w.Error.Code == "") {
		t.Fatalf("error response without code: %s", line)
	}
	return w
}
