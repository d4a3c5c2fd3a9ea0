package agent

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/parryhq/parry/agent/audit"
	"github.com/parryhq/parry/agent/control"
	"github.com/parryhq/parry/agent/enforce"
	"github.com/parryhq/parry/agent/store"
)

func storedAnchor(t *testing.T, d *Daemon) enforce.AuditAnchor {
	t.Helper()
	raw, err := d.Store().Get(enforce.KeyAuditAnchor)
	if err != nil {
		t.Fatal(err)
	}
	var a enforce.AuditAnchor
	if raw != nil {
		if err := json.Unmarshal(raw, &a); err != nil {
			t.Fatal(err)
		}
	}
	return a
}

func TestAuditAnchorWrittenAfterSync(t *testing.T) {
	cfg, fw, clk := testConfig(t), newFakeFW(), &clock{t: time.Unix(1_800_000_000, 0)}
	d := newTestDaemon(t, cfg, fw, clk)
	if err := d.audit.Sync(); err != nil {
		t.Fatal(err)
	}
	before := storedAnchor(t, d)
	d.Audit("test", map[string]any{"n": 1})
	d.Audit("test", map[string]any{"n": 2})
	if got := storedAnchor(t, d); got != before {
		t.Fatalf("anchor moved before the fsync: %+v, was %+v", got, before)
	}
	if err := d.audit.Sync(); err != nil {
		t.Fatal(err)
	}
	seq, hash := d.audit.Last()
	if got := storedAnchor(t, d); got.Seq != seq || got.Hash != hash || got.Segment == 0 {
		t.Fatalf("anchor after sync = %+v, want seq %d hash %s", got, seq, hash)
	}
	if seq <= before.Seq {
		t.Fatalf("seq %d did not advance past %d", seq, before.Seq)
	}
}

// restartAfter runs a daemon that writes a few lines, closes it, applies
// tamper to the state dir, and starts a second daemon on it.
func restartAfter(t *testing.T, tamper func(t *testing.T, path string, seq uint64)) (*Daemon, string) {
	t.Helper()
	cfg, fw, clk := testConfig(t), newFakeFW(), &clock{t: time.Unix(1_800_000_000, 0)}
	d := newTestDaemon(t, cfg, fw, clk)
	for i := range 5 {
		d.Audit("test", map[string]any{"n": i})
	}
	seq, _ := d.audit.Last()
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(cfg.StateDir, "audit.log")
	tamper(t, path, seq)
	return newTestDaemon(t, cfg, fw, clk), cfg.StateDir
}

func brokenFiles(t *testing.T, dir string) []string {
	t.Helper()
	m, err := filepath.Glob(filepath.Join(dir, "audit.log.broken-*"))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestAuditAnchorAtStart(t *testing.T) {
	for _, tc := range []struct {
		name   string
		tamper func(t *testing.T, path string, seq uint64)
		broken bool
		kept   bool
	}{
		{"intact", func(*testing.T, string, uint64) {}, false, false},
		{"truncated", func(t *testing.T, path string, _ uint64) {
			b, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			lines := strings.SplitAfter(string(b), "\n")
			if err := os.WriteFile(path, []byte(strings.Join(lines[:2], "")), 0o600); err != nil {
				t.Fatal(err)
			}
		}, true, true},
		{"deleted", func(t *testing.T, path string, _ uint64) {
			if err := os.Remove(path); err != nil {
				t.Fatal(err)
			}
		}, true, false},
		{"rewritten", func(t *testing.T, path string, seq uint64) {
			if err := os.Remove(path); err != nil {
				t.Fatal(err)
			}
			l, err := audit.Open(path, func() time.Time { return time.Unix(1_700_000_000, 0) })
			if err != nil {
				t.Fatal(err)
			}
			for i := uint64(0); i < seq+3; i++ { // a valid chain that goes past the anchor
				if err := l.Append("forged", map[string]any{"i": i}); err != nil {
					t.Fatal(err)
				}
			}
			if err := l.Close(); err != nil {
				t.Fatal(err)
			}
			if r, err := audit.VerifyFile(path); err != nil || !r.OK {
				t.Fatalf("forged chain should verify on its own: %+v %v", r, err)
			}
		}, true, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d, dir := restartAfter(t, tc.tamper)
			brk := d.AuditBreak()
			if (brk != nil) != tc.broken {
				t.Fatalf("break = %+v, want broken %v", brk, tc.broken)
			}
			if got := len(brokenFiles(t, dir)); got != map[bool]int{true: 1, false: 0}[tc.kept] {
				t.Fatalf("%d kept files, want kept=%v", got, tc.kept)
			}
			out, err := d.opAuditVerify(context.Background(), nil)
			if err != nil {
				t.Fatal(err)
			}
			res := out.(map[string]any)["audit"].(audit.Result)
			if res.OK == tc.broken {
				t.Fatalf("audit_verify ok=%v, want %v: %+v", res.OK, !tc.broken, res)
			}
			if !tc.broken {
				if statusOf(t, d).AuditBreak != nil {
					t.Fatal("status reports a break on an intact log")
				}
				return
			}
			if brk.KeptAs != "" && filepath.Join(dir, brk.KeptAs) != brokenFiles(t, dir)[0] {
				t.Fatalf("kept_as %q, files %v", brk.KeptAs, brokenFiles(t, dir))
			}
			if brk.AnchorSeq == 0 || brk.Found == "" || !strings.Contains(res.Reason, "parry audit ack") {
				t.Fatalf("break %+v, reason %q", brk, res.Reason)
			}
			// The new chain starts with the break record and verifies.
			b, err := os.ReadFile(filepath.Join(dir, "audit.log"))
			if err != nil {
				t.Fatal(err)
			}
			if !strings.HasPrefix(string(b), `{"seq":1,`) || !strings.Contains(strings.SplitN(string(b), "\n", 2)[0], `"event":"audit_chain_broken"`) {
				t.Fatalf("first line of the new log: %.200s", b)
			}
			if statusOf(t, d).AuditBreak == nil {
				t.Fatal("status does not report the break")
			}
			// Acknowledged: verify is ok again, and stays so across a restart.
			if _, err := d.opAuditAck(context.Background(), &control.Call{Peer: control.Peer{User: "root"}}); err != nil {
				t.Fatal(err)
			}
			out, _ = d.opAuditVerify(context.Background(), nil)
			if res := out.(map[string]any)["audit"].(audit.Result); !res.OK {
				t.Fatalf("after ack: %+v", res)
			}
			if d.AuditBreak() != nil {
				t.Fatal("break still reported after ack")
			}
		})
	}
}

func TestAuditAnchorMissingIsAccepted(t *testing.T) {
	cfg, fw, clk := testConfig(t), newFakeFW(), &clock{t: time.Unix(1_800_000_000, 0)}
	d := newTestDaemon(t, cfg, fw, clk)
	d.Audit("test", nil)
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	// As after an upgrade from a version without the anchor; the log is
	// also cut short, which only the anchor could tell.
	st, err := store.Open(filepath.Join(cfg.StateDir, "store.db"))
	if err != nil {
		t.Fatal(err)
	}
	if raw, _ := st.Get(enforce.KeyAuditAnchor); raw == nil {
		t.Fatal("no anchor after a clean stop")
	}
	if err := st.Put(enforce.KeyAuditAnchor, nil); err != nil {
		t.Fatal(err)
	}
	st.Close()
	if err := os.WriteFile(filepath.Join(cfg.StateDir, "audit.log"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	d = newTestDaemon(t, cfg, fw, clk)
	if brk := d.AuditBreak(); brk != nil {
		t.Fatalf("missing anchor reported as a break: %+v", brk)
	}
}
