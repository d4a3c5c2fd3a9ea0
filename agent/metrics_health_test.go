package agent

import (
	"context"
	"io"
	"log/slog"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/parryhq/parry/agent/audit"
	"github.com/parryhq/parry/response"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestMetricsAuditChainAndReasserts: parry_audit_chain_ok is 0 while
// audit appends fail and 1 again once they succeed; the table's
// re-assertions are counted by reason, a table found missing also as a
// heal.
func TestMetricsAuditChainAndReasserts(t *testing.T) {
	cfg := testConfig(t)
	cfg.Metrics.Enabled, cfg.Metrics.Listen = true, "127.0.0.1:0"
	fw := newFakeFW()
	var full atomic.Bool
	clk := &clock{t: time.Now()}
	d, err := New(cfg, Options{Firewall: fw, Now: clk.Now, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		HostAddrs: func() ([]netip.Addr, error) { return []netip.Addr{netip.MustParseAddr("192.0.2.1")}, nil },
		AuditFile: func(f audit.File) audit.File { return fullDisk{File: f, full: &full} }})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	in, err := AttachIncident(d, "")
	if err != nil {
		t.Fatal(err)
	}
	if err := d.heal.Reconcile("start"); err != nil {
		t.Fatal(err)
	}
	reg := in.Metrics().Registry()
	chainOK := func(want string) {
		t.Helper()
		exp := "# HELP parry_audit_chain_ok 1 while the audit log is being written and its chain is intact; 0 when appends are failing (full disk, I/O error) or the chain was found broken at start and not yet acknowledged (parry audit ack).\n# TYPE parry_audit_chain_ok gauge\nparry_audit_chain_ok " + want + "\n"
		if err := testutil.GatherAndCompare(reg, strings.NewReader(exp), "parry_audit_chain_ok"); err != nil {
			t.Error(err)
		}
	}
	chainOK("1")
	ctx := context.Background()
	block := func(ip string) error {
		_, err := d.path.Enforce(ctx, response.Decision{Action: response.ActionBlock, Source: "cli", Targets: pfx(ip), Until: clk.Now().Add(time.Hour)})
		return err
	}
	full.Store(true)
	if err := block("203.0.113.1"); err == nil {
		t.Fatal("block with the audit log failing: ok")
	}
	chainOK("0")
	full.Store(false)
	if err := block("203.0.113.2"); err != nil {
		t.Fatal(err)
	}
	chainOK("1")

	fw.drop()
	d.heal.CheckTable()
	d.heal.CheckTable() // present again: no second heal
	want := `
# HELP parry_table_heals_total Times parry's nftables table was found missing and rebuilt (self-heal).
# TYPE parry_table_heals_total counter
parry_table_heals_total 1
# HELP parry_table_reasserts_total Times the store's blocks, allowlist and lockdown were re-asserted into the kernel, by reason (start, missing: the table was gone and was rebuilt, foreign_change: another program changed nftables, other).
# TYPE parry_table_reasserts_total counter
parry_table_reasserts_total{reason="foreign_change"} 0
parry_table_reasserts_total{reason="missing"} 1
parry_table_reasserts_total{reason="other"} 0
parry_table_reasserts_total{reason="start"} 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "parry_table_heals_total", "parry_table_reasserts_total"); err != nil {
		t.Error(err)
	}
}
