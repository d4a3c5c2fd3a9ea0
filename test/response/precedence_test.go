package response_test

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/parryhq/parry/test/netns"
)

// TestSenderCannotLiftAdminBan: an admin's permanent block stays permanent
// (in the store, the kernel and `parry list`) when a non-admin sender's five
// auth_failure signals make the policy decide a 1h block of the same
// address, and the sender's decision is recorded as having changed nothing.
func TestSenderCannotLiftAdminBan(t *testing.T) {
	netns.RequireRoot(t)
	ns := netns.New(t)
	web := newTestUser(t)
	cfg := fmt.Sprintf("control:\n  socket_mode: \"0666\"\nresponse:\n  senders:\n    - {user: %s, kinds: [auth_failure]}\n", web.name)
	d := newDaemon(t, ns, cfg)
	d.start()
	const target = "198.51.100.123"
	d.mustParry("block", target, "--permanent", "--reason", "admin ban")

	for i := range 5 {
		out, errOut, code := d.parryAs(web, "signal", "auth_failure", "--ip", target, "--source", "webapp")
		if code != 0 {
			t.Fatalf("signal %d: exit %d %q", i+1, code, errOut)
		}
		if i == 4 && !strings.Contains(out, "decided block") {
			t.Errorf("fifth signal: %q; want a policy block decision", out)
		}
	}

	var resp struct {
		Blocks []struct {
			Target, Reason, Until, Rule string
		} `json:"blocks"`
	}
	if err := json.Unmarshal([]byte(d.mustParry("list", "--json")), &resp); err != nil {
		t.Fatal(err)
	}
	if len(resp.Blocks) != 1 || resp.Blocks[0].Until != "" || resp.Blocks[0].Reason != "admin ban" || resp.Blocks[0].Rule != "" {
		t.Errorf("parry list after the sender's signals: %+v; want the admin's permanent block, reason %q", resp.Blocks, "admin ban")
	}
	if out := d.mustParry("list"); !strings.Contains(out, "never") {
		t.Errorf("parry list: %q; want the block never to expire", out)
	}
	log, err := os.ReadFile(filepath.Join(d.state, "audit.log"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(log), `"kept":["`+target+`"]`) {
		t.Errorf("the audit log does not record the policy's block as having kept %s:\n%s", target, log)
	}
	table := ns.MustRun(t, "nft", "list", "table", "inet", "parry")
	found := false
	for _, line := range strings.Split(table, "\n") {
		if strings.Contains(line, target) {
			found = true
			if strings.Contains(line, "timeout") || strings.Contains(line, "expires") {
				t.Errorf("kernel element of %s has a timeout: %q", target, strings.TrimSpace(line))
			}
		}
	}
	if !found {
		t.Errorf("%s not in the kernel:\n%s", target, table)
	}
}
