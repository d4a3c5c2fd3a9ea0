package droptable

import (
	"os"
	"runtime"
	"strings"
	"testing"

	"github.com/parryhq/parry/test/netns"
	"golang.org/x/sys/unix"
)

// inNS runs fn on a thread inside ns, and puts the thread back after.
func inNS(t *testing.T, ns *netns.NS, fn func()) {
	t.Helper()
	runtime.LockOSThread()
	orig, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	defer orig.Close()
	target, err := os.Open(ns.Path)
	if err != nil {
		t.Fatal(err)
	}
	defer target.Close()
	if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
		t.Fatalf("setns: %v", err)
	}
	fn()
	if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
		t.Fatalf("setns back: %v (the thread stays locked and dies with the test)", err)
	}
	runtime.UnlockOSThread()
}

// TestInet: the table goes with its chains, sets and elements; the table
// next to it stays; a second delete says there was nothing to delete.
func TestInet(t *testing.T) {
	ns := netns.New(t)
	ns.MustRun(t, "nft", "add table inet droptest; add set inet droptest s { type ipv4_addr; flags timeout; }; "+
		"add element inet droptest s { 203.0.113.7 timeout 1h }; add chain inet droptest input { type filter hook input priority 0; }; "+
		"add rule inet droptest input ip saddr @s drop; add table inet keep; add table ip droptest")
	var first, second bool
	var err1, err2 error
	inNS(t, ns, func() {
		first, err1 = Inet("droptest")
		second, err2 = Inet("droptest")
	})
	if err1 != nil || !first {
		t.Fatalf("first delete: %v, %v; want true, nil", first, err1)
	}
	if err2 != nil || second {
		t.Fatalf("second delete: %v, %v; want false, nil (nothing to delete)", second, err2)
	}
	out := ns.MustRun(t, "nft", "list", "tables")
	if strings.Contains(out, "inet droptest") {
		t.Fatalf("table still there:\n%s", out)
	}
	if !strings.Contains(out, "table inet keep") || !strings.Contains(out, "table ip droptest") {
		t.Fatalf("another table was touched:\n%s", out)
	}
}

func TestInetRefusesBadNames(t *testing.T) {
	for _, name := range []string{"", strings.Repeat("x", 256), "a\x00b"} {
		if _, err := Inet(name); err == nil {
			t.Errorf("Inet(%q): no error", name)
		}
	}
}
