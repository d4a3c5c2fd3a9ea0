package agent

import (
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/parryhq/parry/agent/api"
	"github.com/parryhq/parry/firewall"
)

func TestRebuildFromAuditHistory(t *testing.T) {
	log := strings.Join([]string{
		`{"seq":1,"time":"2026-11-27T00:00:00Z","event":"block","fields":{"id":"a","targets":["203.0.113.1","203.0.113.2"],"reason":"first"}}`,
		`{"seq":2,"time":"2026-11-27T00:01:00Z","event":"block","fields":{"id":"b","targets":["203.0.113.2"],"reason":"second"}}`,
		`{"seq":3,"time":"2026-11-27T00:02:00Z","event":"block","fields":{"id":"c","targets":["203.0.113.1"],"reason":"dry","dry_run":true}}`,
		`{"seq":4,"time":"2026-11-27T00:03:00Z","event":"block","fields":{"id":"d","targets":["203.0.113.3"],"reason":"refused","refused":[{"code":"x","target":"203.0.113.3"}]}}`,
		`{"seq":5,"time":"2026-11-27T00:04:00Z","event":"block","fields":{"id":"e","targets":["203.0.113.4"],"reason":"later unblocked"}}`,
		`{"seq":6,"time":"2026-11-27T00:05:00Z","event":"unblock","fields":{"id":"f","targets":["203.0.113.4"]}}`,
		`{"seq":7,"time":"2026-11-27T00:06:00Z","event":"lockdown","fields":{"id":"L","reason":"incident"}}`,
		`{"seq":8,"time":"2026-11-27T00:07:00Z","event":"block","fields":{"id":"g","targ`, // torn
		``,
	}, "\n")
	path := filepath.Join(t.TempDir(), "audit.log")
	if err := os.WriteFile(path, []byte(log), 0o600); err != nil {
		t.Fatal(err)
	}
	hist, lock, lines, faults, err := auditHistory(path)
	if err != nil || lines != 8 || faults != 1 {
		t.Fatalf("auditHistory: %d lines, %d faults, %v", lines, faults, err)
	}
	now := time.Date(2026, 11, 28, 0, 0, 0, 0, time.UTC)
	els := []firewall.Element{
		{Prefix: netip.MustParsePrefix("203.0.113.1/32"), Timeout: time.Hour},
		{Prefix: netip.MustParsePrefix("203.0.113.2/32")},
		{Prefix: netip.MustParsePrefix("203.0.113.3/32"), Timeout: time.Minute},
		{Prefix: netip.MustParsePrefix("203.0.113.4/32"), Timeout: time.Minute},
	}
	ch, rep := rebuildChange(els, &firewall.Lockdown{Timeout: time.Hour, Isolate: true}, hist, lock, now)
	if rep.Blocks != 4 || rep.Matched != 2 || rep.Unmatched != 2 || !rep.Lockdown {
		t.Fatalf("report %+v", rep)
	}
	decs := map[uint64]string{}
	for _, d := range ch.PutDecisions {
		decs[d.Seq] = d.ID + ":" + d.Reason
	}
	got := map[string]string{}
	for _, b := range ch.PutBlocks {
		until := "permanent"
		if b.Until != 0 {
			until = time.UnixMilli(b.Until).Sub(now).String()
		}
		got[api.FormatTarget(b.Prefix)] = decs[b.Decision] + " " + until
	}
	want := map[string]string{
		"203.0.113.1": "a:first 1h0m0s",
		"203.0.113.2": "b:second permanent",
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s: got %q, want %q", k, got[k], v)
		}
	}
	for _, k := range []string{"203.0.113.3", "203.0.113.4"} {
		if !strings.Contains(got[k], "no audit record matched") {
			t.Errorf("%s: got %q, want the recovered decision", k, got[k])
		}
	}
	if l := ch.SetLockdown; l == nil || l.ID != "L" || l.Reason != "incident" || !l.Isolate || !l.Until.Equal(now.Add(time.Hour)) {
		t.Errorf("lockdown %+v", l)
	}
}
