package agent

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/parryhq/parry/agent/api"
	"github.com/parryhq/parry/agent/audit"
	"github.com/parryhq/parry/agent/enforce"
	"github.com/parryhq/parry/agent/store"
	"github.com/parryhq/parry/response"
)

// fullDisk makes the audit log's writes fail with ENOSPC while full is set
// (a short write first, as a nearly full filesystem does).
type fullDisk struct {
	audit.File
	full *atomic.Bool
}

func (f fullDisk) Write(b []byte) (int, error) {
	if f.full.Load() {
		n, _ := f.File.Write(b[:min(len(b), 25)])
		return n, syscall.ENOSPC
	}
	return f.File.Write(b)
}

func newAuditFaultDaemon(t *testing.T, cfg Config, fw *fakeFW, clk *clock, full *atomic.Bool) *Daemon {
	t.Helper()
	d, err := New(cfg, Options{Firewall: fw, Now: clk.Now, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		HostAddrs: func() ([]netip.Addr, error) { return []netip.Addr{netip.MustParseAddr("192.0.2.1")}, nil },
		AuditFile: func(f audit.File) audit.File { return fullDisk{File: f, full: full} }})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	if err := d.heal.Reconcile("start"); err != nil {
		t.Fatal(err)
	}
	return d
}

// readAuditLog reads the lines of the audit log in dir.
func readAuditLog(t *testing.T, dir string) []map[string]any {
	t.Helper()
	f, err := os.Open(filepath.Join(dir, "audit.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []map[string]any
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("audit line %q: %v", sc.Text(), err)
		}
		out = append(out, m)
	}
	return out
}

func verifyAuditOK(t *testing.T, dir string) audit.Result {
	t.Helper()
	res, err := audit.VerifyFile(filepath.Join(dir, "audit.log"))
	if err != nil || !res.OK {
		t.Fatalf("audit verify: %+v, %v", res, err)
	}
	return res
}

// A change whose audit line cannot be written is refused with code audit
// and changes nothing, in the store or the kernel; status shows the
// failure until an append succeeds again.
func TestAuditWriteFailureRefusesChanges(t *testing.T) {
	clk := &clock{t: t0}
	fw := newFakeFW()
	cfg := testConfig(t)
	var full atomic.Bool
	d := newAuditFaultDaemon(t, cfg, fw, clk, &full)
	ctx := context.Background()
	if _, err := d.path.Enforce(ctx, response.Decision{Action: response.ActionBlock, Targets: pfx("203.0.113.7"), Until: t0.Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	before, blocksBefore := fw.state(), blocksOf(t, d)
	full.Store(true)

	decs := []response.Decision{
		{Action: response.ActionBlock, Targets: pfx("203.0.113.7", "203.0.113.9"), Until: t0.Add(5 * time.Hour)},
		{Action: response.ActionUnblock, Targets: pfx("203.0.113.7")},
		{Action: response.ActionLockdown, Until: t0.Add(time.Hour)},
	}
	for _, dec := range decs {
		if _, err := d.path.Enforce(ctx, dec); api.CodeOf(err) != api.CodeAudit {
			t.Fatalf("%s with a full disk: want code %s, got %v", dec.Action, api.CodeAudit, err)
		}
	}
	outs := d.path.EnforceBatch(ctx, []response.Decision{
		{Action: response.ActionBlock, Targets: pfx("203.0.113.20"), Until: t0.Add(time.Hour)},
		{Action: response.ActionBlock, Targets: pfx("203.0.113.21"), Until: t0.Add(time.Hour)},
	}, enforce.EnforceOptions{})
	for _, o := range outs {
		if api.CodeOf(o.Err) != api.CodeAudit {
			t.Fatalf("batch with a full disk: want code %s, got %v", api.CodeAudit, o.Err)
		}
	}
	if diff := cmp.Diff(before, fw.state()); diff != "" {
		t.Fatalf("kernel changed by refused requests (-want +got):\n%s", diff)
	}
	if fw.lockdown != nil {
		t.Fatalf("lockdown in the kernel after a refused lockdown: %+v", fw.lockdown)
	}
	st := statusOf(t, d)
	if st.AuditFailure == nil || st.AuditFailure.Op != "write" || !strings.Contains(st.AuditFailure.Error, "no space left") {
		t.Fatalf("status.audit_failure = %+v, want the ENOSPC write failure", st.AuditFailure)
	}
	if st.Lockdown.Active {
		t.Fatal("status shows a lockdown that was refused")
	}
	verifyAuditOK(t, cfg.StateDir) // the short writes were cut off

	// The store holds what it held before: reopen and compare.
	d.Close()
	full.Store(false)
	d2 := newAuditFaultDaemon(t, cfg, fw, clk, &full)
	if diff := cmp.Diff(blocksBefore, blocksOf(t, d2)); diff != "" {
		t.Fatalf("store changed by refused requests (-want +got):\n%s", diff)
	}
	if p, _ := d2.store.Pending(); len(p) != 0 {
		t.Fatalf("pending audit records of refused requests left in the store: %+v", p)
	}
	if statusOf(t, d2).AuditFailure != nil {
		t.Fatal("audit failure reported after a restart with space")
	}

	// Space returns within a run: the next append succeeds and clears it.
	full.Store(true)
	if _, err := d2.path.Enforce(ctx, decs[0]); api.CodeOf(err) != api.CodeAudit {
		t.Fatalf("want %s, got %v", api.CodeAudit, err)
	}
	if statusOf(t, d2).AuditFailure == nil {
		t.Fatal("no audit failure in status")
	}
	full.Store(false)
	if _, err := d2.path.Enforce(ctx, decs[0]); err != nil {
		t.Fatal(err)
	}
	if f := statusOf(t, d2).AuditFailure; f != nil {
		t.Fatalf("audit failure still reported after a good append: %+v", f)
	}
	res, err := d2.verifyAudit()
	if err != nil || !res.OK {
		t.Fatalf("audit verify: %+v, %v", res, err)
	}
}

// A crash between the store commit and the audit write (kill -9) leaves a
// committed block without its audit line; the next start writes it,
// marked recovered.
func TestCrashBeforeAuditWriteRecoveredAtStart(t *testing.T) {
	clk := &clock{t: t0}
	fw := newFakeFW()
	cfg := testConfig(t)
	d := newTestDaemon(t, cfg, fw, clk)
	ctx := context.Background()
	if _, err := d.path.Enforce(ctx, response.Decision{Action: response.ActionBlock, Targets: pfx("203.0.113.1"), Until: t0.Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	d.crashAfterCommit = func() bool { return true }
	d.path.EnforceBatch(ctx, []response.Decision{
		{ID: "lost1", Action: response.ActionBlock, Targets: pfx("203.0.113.7", "203.0.113.8"), Until: t0.Add(time.Hour), Reason: "r1"},
		{ID: "lost2", Action: response.ActionBlock, Targets: pfx("203.0.113.9"), Reason: "r2"},
	}, enforce.EnforceOptions{})
	d.Close()
	for _, e := range readAuditLog(t, cfg.StateDir) {
		if e["event"] == "block" && e["fields"].(map[string]any)["id"] != nil && strings.HasPrefix(e["fields"].(map[string]any)["id"].(string), "lost") {
			t.Fatal("the crash window did not lose the audit line; the test proves nothing")
		}
	}

	d2 := newTestDaemon(t, cfg, fw, clk)
	if n := len(blocksOf(t, d2)); n != 4 {
		t.Fatalf("blocks after restart = %d, want 4 (committed before the crash)", n)
	}
	got := map[string]map[string]any{}
	for _, e := range readAuditLog(t, cfg.StateDir) {
		f, _ := e["fields"].(map[string]any)
		if id, _ := f["id"].(string); e["event"] == "block" {
			got[id] = f
		}
	}
	for _, id := range []string{"lost1", "lost2"} {
		f := got[id]
		if f == nil || f["recovered"] != true || f["decided_at"] == nil {
			t.Fatalf("no recovered block line for %s: %+v", id, got)
		}
	}
	if ts := got["lost1"]["targets"].([]any); len(ts) != 2 || ts[0] != "203.0.113.7" {
		t.Fatalf("recovered targets = %v", ts)
	}
	d2.audit.Sync()
	if p, _ := d2.store.Pending(); len(p) != 0 {
		t.Fatalf("pending records left after recovery: %+v", p)
	}
	verifyAuditOK(t, cfg.StateDir)

	// A second start writes nothing more.
	d2.Close()
	d3 := newTestDaemon(t, cfg, fw, clk)
	d3.Close()
	n := 0
	for _, e := range readAuditLog(t, cfg.StateDir) {
		if f, _ := e["fields"].(map[string]any); f["recovered"] == true {
			n++
		}
	}
	if n != 2 {
		t.Fatalf("recovered lines after a second start = %d, want 2", n)
	}
	verifyAuditOK(t, cfg.StateDir)
}

// A line written but not yet fsync'd when the daemon dies is in the log:
// its pending record must not produce a second, recovered line.
func TestRecoveryDoesNotDuplicateWrittenLines(t *testing.T) {
	clk := &clock{t: t0}
	fw := newFakeFW()
	cfg := testConfig(t)
	d := newTestDaemon(t, cfg, fw, clk)
	d.audit.Sync()
	anchor, _ := d.store.Get(enforce.KeyAuditAnchor)
	if _, err := d.path.Enforce(context.Background(), response.Decision{ID: "written", Action: response.ActionBlock, Targets: pfx("203.0.113.7"), Until: t0.Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	pend, err := d.store.Pending()
	if err != nil || len(pend) != 1 {
		t.Fatalf("pending before the sync = %+v, %v; want the block's record", pend, err)
	}
	d.Close()
	// Put the store back as a kill -9 before the sync would leave it.
	st, err := store.Open(filepath.Join(cfg.StateDir, "store.db"))
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Commit(store.Change{PutPending: pend, PutKV: map[string][]byte{enforce.KeyAuditAnchor: anchor}}); err != nil {
		t.Fatal(err)
	}
	st.Close()
	d2 := newTestDaemon(t, cfg, fw, clk)
	d2.Close()
	n := 0
	for _, e := range readAuditLog(t, cfg.StateDir) {
		if f, _ := e["fields"].(map[string]any); f["id"] == "written" {
			n++
		}
	}
	if n != 1 {
		t.Fatalf("block lines for the decision = %d, want 1", n)
	}
	verifyAuditOK(t, cfg.StateDir)
}

// The real thing: the audit log on a small tmpfs that fills up. Blocks are
// refused with nothing changed, the log stays whole, and once space
// returns blocks succeed and the chain verifies.
func TestAuditOnFullFilesystem(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount a tmpfs")
	}
	mnt := filepath.Join(t.TempDir(), "fs")
	if err := os.Mkdir(mnt, 0o700); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", mnt).CombinedOutput(); err != nil {
		t.Skipf("cannot mount a tmpfs: %v: %s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", "-l", mnt).Run() })
	clk := &clock{t: t0}
	fw := newFakeFW()
	cfg := testConfig(t)
	// The store stays on the roomy state dir; the audit log is on the tmpfs.
	if err := os.Symlink(filepath.Join(mnt, "audit.log"), filepath.Join(cfg.StateDir, "audit.log")); err != nil {
		t.Fatal(err)
	}
	d := newTestDaemon(t, cfg, fw, clk)
	ctx := context.Background()
	if _, err := d.path.Enforce(ctx, response.Decision{Action: response.ActionBlock, Targets: pfx("203.0.113.7"), Until: t0.Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	before, blocksBefore := fw.state(), blocksOf(t, d)
	filler, err := os.Create(filepath.Join(mnt, "filler"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := filler.Write(make([]byte, 1<<20)); !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("filling the tmpfs: %v", err)
	}
	filler.Close()
	// Big enough not to fit in the page the log's tail still has room in.
	var targets []netip.Prefix
	for i := range 400 {
		targets = append(targets, netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 18, byte(i >> 8), byte(i)}), 32))
	}
	_, err = d.path.Enforce(ctx, response.Decision{Action: response.ActionBlock, Targets: targets, Until: t0.Add(time.Hour)})
	if api.CodeOf(err) != api.CodeAudit {
		t.Fatalf("block on a full filesystem: want code %s, got %v", api.CodeAudit, err)
	}
	if diff := cmp.Diff(before, fw.state()); diff != "" {
		t.Fatalf("kernel changed (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(blocksBefore, blocksOf(t, d)); diff != "" {
		t.Fatalf("blocks changed (-want +got):\n%s", diff)
	}
	if f := statusOf(t, d).AuditFailure; f == nil || !strings.Contains(f.Error, "no space left") {
		t.Fatalf("status.audit_failure = %+v", f)
	}
	verifyAuditOK(t, cfg.StateDir)

	os.Remove(filepath.Join(mnt, "filler")) // space returns
	if _, err := d.path.Enforce(ctx, response.Decision{Action: response.ActionBlock, Targets: targets, Until: t0.Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	if f := statusOf(t, d).AuditFailure; f != nil {
		t.Fatalf("audit failure still reported: %+v", f)
	}
	if res, err := d.verifyAudit(); err != nil || !res.OK {
		t.Fatalf("audit verify after space returned: %+v, %v", res, err)
	}
}
