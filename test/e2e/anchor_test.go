package e2e

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/parryhq/parry/test/netns"
)

// An audit.log cut short while parryd is stopped is detected at the next
// start against the anchor in the store: the old file is kept aside, a new
// chain starts with audit_chain_broken, and status and audit verify report
// it until acknowledged.
func TestAuditChainBreakAcrossRestart(t *testing.T) {
	netns.RequireRoot(t)
	p := netns.NewPair(t)
	d := newDaemon(t, p.Host)
	d.Start()
	d.MustParry("block", "203.0.113.7", "--for", "1h", "--reason", "before the cut")
	d.Stop()
	log := d.AuditPath()
	b, err := os.ReadFile(log)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.SplitAfter(string(b), "\n")
	cut := strings.Join(lines[:len(lines)/2], "") // a chain that verifies on its own
	if err := os.WriteFile(log, []byte(cut), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, errOut, code := d.Parry("audit", "verify", "--log", log); code != 0 {
		t.Fatalf("the cut log should verify on its own: exit %d %q %q", code, out, errOut)
	}

	d.Start()
	out := d.MustParry("status")
	if !strings.Contains(out, "AUDIT CHAIN BROKEN") {
		t.Fatalf("status does not report the break:\n%s", out)
	}
	_, errOut, code := d.Parry("audit", "verify")
	if code != 1 || !strings.Contains(errOut, "chain broken across a restart") || !strings.Contains(errOut, "parry audit ack") {
		t.Fatalf("audit verify: exit %d %q", code, errOut)
	}
	var st struct {
		Break *struct {
			KeptAs    string `json:"kept_as"`
			AnchorSeq uint64 `json:"anchor_seq"`
		} `json:"audit_chain_broken"`
	}
	if err := json.Unmarshal([]byte(d.MustParry("status", "--json")), &st); err != nil || st.Break == nil || st.Break.KeptAs == "" {
		t.Fatalf("status --json: %v %+v", err, st.Break)
	}
	kept, err := os.ReadFile(filepath.Join(d.StateDir, st.Break.KeptAs))
	if err != nil || string(kept) != cut {
		t.Fatalf("old log not kept as it was: %v (%d bytes, want %d)", err, len(kept), len(cut))
	}
	cur, err := os.ReadFile(log)
	if err != nil || !strings.Contains(strings.SplitN(string(cur), "\n", 2)[0], `"event":"audit_chain_broken"`) {
		t.Fatalf("new chain does not start with audit_chain_broken: %v %.300s", err, cur)
	}
	if !strings.Contains(d.Log(), "audit chain broken") {
		t.Fatalf("no error logged:\n%s", d.Log())
	}

	// Acknowledged: verify passes, and a clean restart raises nothing.
	d.MustParry("audit", "ack")
	if out, errOut, code := d.Parry("audit", "verify"); code != 0 {
		t.Fatalf("verify after ack: exit %d %q %q", code, out, errOut)
	}
	d.Stop()
	d.Start()
	if out, errOut, code := d.Parry("audit", "verify"); code != 0 {
		t.Fatalf("verify after a clean restart: exit %d %q %q", code, out, errOut)
	}
	if out := d.MustParry("status"); strings.Contains(out, "AUDIT CHAIN BROKEN") {
		t.Fatalf("status after ack and restart:\n%s", out)
	}
}
