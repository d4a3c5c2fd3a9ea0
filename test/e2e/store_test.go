package e2e

import (
	"bytes"
	"encoding/json"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/parryhq/parry/test/netns"
)

// corruptStore overwrites every page of store.db after the two meta pages
// with random bytes.
func corruptStore(t *testing.T, dir string) {
	t.Helper()
	path := filepath.Join(dir, "store.db")
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(5, 6))
	for i := 2 * os.Getpagesize(); i < len(b); i++ {
		b[i] = byte(rng.Uint32())
	}
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// exitStoreCorrupt is agent.ExitStoreCorrupt, the status systemd's unit
// does not restart on.
const exitStoreCorrupt = 65

func TestCorruptStoreRefusesStart(t *testing.T) {
	p := netns.NewPair(t)
	d := newDaemon(t, p.Host)
	d.Start()
	d.MustParry("block", "203.0.113.7", "--for", "1h")
	d.Stop()
	corruptStore(t, d.StateDir)
	before, _ := os.ReadFile(filepath.Join(d.StateDir, "store.db"))

	out, code := d.RunOnce()
	t.Logf("parryd:\n%s", out)
	if code != exitStoreCorrupt {
		t.Fatalf("parryd on a corrupt store exited %d, want %d:\n%s", code, exitStoreCorrupt, out)
	}
	for _, want := range []string{"store.db is corrupt", "parryd --rebuild-store", "mv ", "audit.log", "stay in force until their timeouts"} {
		if !strings.Contains(out, want) {
			t.Errorf("message lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "panic") || strings.Contains(out, "goroutine ") {
		t.Errorf("parryd panicked:\n%s", out)
	}
	if _, ok := kernelElems(t, p.Host, d.Table)["203.0.113.7"]; !ok {
		t.Error("the block left the kernel; it must stay in force")
	}
	if after, _ := os.ReadFile(filepath.Join(d.StateDir, "store.db")); !bytes.Equal(before, after) {
		t.Error("parryd changed the corrupt store")
	}
}

// TestRebuildStore: parryd --rebuild-store on a corrupt store recovers the
// kernel's blocks with their remaining timeouts and, where the audit log
// has them, their reasons; the daemon then starts on it with the blocks in
// force (none swept as unknown).
func TestRebuildStore(t *testing.T) {
	p := netns.NewPair(t)
	d := newDaemon(t, p.Host)
	d.Start()
	d.MustParry("block", "203.0.113.7", "--for", "1h", "--reason", "ssh brute force")
	d.MustParry("block", "198.51.100.0/24", "--permanent", "--reason", "abuse net")
	d.MustParry("block", "2001:db8:5::/48", "--for", "2h", "--reason", "v6 scan")
	d.MustParry("block", "203.0.113.8", "--for", "1h", "--reason", "gone")
	d.MustParry("unblock", "203.0.113.8")
	d.Stop()
	// An element only the kernel knows (no audit record).
	p.Host.MustRun(t, "nft", "add", "element", "inet", d.Table, "block4", "{ 203.0.113.99 timeout 30m }")
	corruptStore(t, d.StateDir)
	// A journal segment of the corrupt store must go aside with it, not be
	// replayed onto the rebuilt one.
	stale := filepath.Join(d.StateDir, "store.db.wal.999999")
	if err := os.WriteFile(stale, []byte("left by the corrupt store"), 0o600); err != nil {
		t.Fatal(err)
	}

	out, code := d.RunOnce("--rebuild-store")
	t.Logf("parryd --rebuild-store:\n%s", out)
	if code != 0 {
		t.Fatalf("rebuild exited %d", code)
	}
	if !strings.Contains(out, "4 blocks from the kernel") || !strings.Contains(out, "3 with their decision from the audit log, 1 without") {
		t.Errorf("summary does not say what was recovered:\n%s", out)
	}
	kept, _ := filepath.Glob(filepath.Join(d.StateDir, "store.db.corrupt-*[0-9]Z"))
	if len(kept) != 1 {
		t.Errorf("corrupt store kept as %v, want one file", kept)
	}
	if _, err := os.Stat(stale); err == nil {
		t.Errorf("the corrupt store's journal segment %s is still beside the rebuilt store", stale)
	}
	if moved, _ := filepath.Glob(filepath.Join(d.StateDir, "store.db.corrupt-*.wal.999999")); len(moved) != 1 {
		t.Errorf("the corrupt store's journal segment was not kept beside it: %v", moved)
	}
	// A second rebuild refuses: the store is healthy now.
	if out, code := d.RunOnce("--rebuild-store"); code == 0 || !strings.Contains(out, "not corrupt") {
		t.Errorf("rebuild of a healthy store: exit %d:\n%s", code, out)
	}

	d.Start()
	var list struct {
		Count  int `json:"count"`
		Blocks []struct {
			Target string    `json:"target"`
			Reason string    `json:"reason"`
			Until  time.Time `json:"until"`
		} `json:"blocks"`
	}
	if err := json.Unmarshal([]byte(d.MustParry("list", "--json")), &list); err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, b := range list.Blocks {
		left := "permanent"
		if !b.Until.IsZero() {
			left = time.Until(b.Until).Round(10 * time.Minute).String()
		}
		got[b.Target] = b.Reason + " " + left
	}
	want := map[string]string{
		"203.0.113.7":     "ssh brute force 1h0m0s",
		"198.51.100.0/24": "abuse net permanent",
		"2001:db8:5::/48": "v6 scan 2h0m0s",
		"203.0.113.99":    "recovered from the kernel by parryd --rebuild-store; no audit record matched 30m0s",
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("list after rebuild (-want +got):\n%s", diff)
	}
	// The daemon's start sweep must not remove what the store now knows.
	netns.Eventually(t, 10*time.Second, "the start sweep is audited", func() bool {
		b, _ := os.ReadFile(d.AuditPath())
		return bytes.Contains(b, []byte(`"reason":"sweep"`))
	})
	k := kernelElems(t, p.Host, d.Table)
	for _, e := range []string{"203.0.113.7", "198.51.100.0/24", "2001:db8:5::/48", "203.0.113.99"} {
		if _, ok := k[e]; !ok {
			t.Errorf("%s left the kernel after the rebuilt store was loaded: %v", e, k)
		}
	}
	if out := d.MustParry("audit", "verify"); !strings.Contains(out, "ok") {
		t.Errorf("audit verify after rebuild: %s", out)
	}
}
