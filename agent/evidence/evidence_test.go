package evidence

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"github.com/parryhq/parry/agent/api"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// loopbackConn opens a real TCP connection on loopback and returns the
// listener's and the client's addresses.
func loopbackConn(t *testing.T) (listen, client netip.AddrPort) {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err == nil {
			accepted <- c
		}
	}()
	c, err := net.Dial("tcp4", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	s := <-accepted
	t.Cleanup(func() { s.Close() })
	return ln.Addr().(*net.TCPAddr).AddrPort(), c.LocalAddr().(*net.TCPAddr).AddrPort()
}

func TestCaptureSeesOwnProcessAndConnection(t *testing.T) {
	listen, client := loopbackConn(t)
	c := NewCollector(Config{}, nil)
	s, err := c.Capture(t.Context(), "test", "cli")
	if err != nil {
		t.Fatal(err)
	}
	if s.Incomplete {
		t.Fatalf("incomplete: %v", s.Errors)
	}
	pid := int32(os.Getpid())
	exe, _ := os.Executable()
	var me *Process
	for i := range s.Processes {
		if s.Processes[i].PID == pid {
			me = &s.Processes[i]
		}
	}
	if me == nil {
		t.Fatalf("own pid %d not among %d processes", pid, len(s.Processes))
	}
	if me.Exe != exe || me.PPID != int32(os.Getppid()) || me.Started.IsZero() || len(me.Cmdline) == 0 {
		t.Errorf("own process = %+v, want exe %s ppid %d", me, exe, os.Getppid())
	}
	if me.UID != int32(os.Getuid()) {
		t.Errorf("uid = %d, want %d", me.UID, os.Getuid())
	}
	var sawListen, sawConn bool
	for _, l := range s.Listening {
		if l.Local == listen && l.PID == pid && l.Exe == exe {
			sawListen = true
		}
	}
	for _, cn := range s.Connections {
		if cn.Local == client && cn.Remote == listen && cn.PID == pid && cn.State == "ESTABLISHED" {
			sawConn = true
		}
	}
	if !sawListen || !sawConn {
		t.Errorf("listener %v seen=%v, connection %v->%v seen=%v", listen, sawListen, client, listen, sawConn)
	}
	if s.BootTime.IsZero() || s.UptimeS == 0 || s.ProcessesTotal < len(s.Processes) {
		t.Errorf("host facts: boot %v uptime %d total %d", s.BootTime, s.UptimeS, s.ProcessesTotal)
	}
}

func TestCaptureCaps(t *testing.T) {
	loopbackConn(t)
	c := NewCollector(Config{MaxProcesses: 1, MaxConnections: 1}, nil)
	s, err := c.Capture(t.Context(), "caps", "")
	if err != nil {
		t.Fatal(err)
	}
	if len(s.Processes) != 1 || !s.ProcessesTruncated || s.ProcessesTotal < 2 {
		t.Errorf("processes: %d recorded, truncated=%v, total %d", len(s.Processes), s.ProcessesTruncated, s.ProcessesTotal)
	}
	if len(s.Connections) > 1 || len(s.Listening) > 1 {
		t.Errorf("connections %d listening %d, want at most 1 each", len(s.Connections), len(s.Listening))
	}
}

func TestCapArgs(t *testing.T) {
	got, cut := capArgs([]string{"abc", "defgh", "ij"}, 6)
	if !cut || len(got) != 2 || got[0] != "abc" || got[1] != "def" {
		t.Errorf("capArgs = %q, %v", got, cut)
	}
	got, cut = capArgs([]string{"ab"}, 6)
	if cut || len(got) != 1 {
		t.Errorf("capArgs short = %q, %v", got, cut)
	}
}

func TestCaptureBusyHonoursDeadline(t *testing.T) {
	c := NewCollector(Config{}, nil)
	c.sem <- struct{}{} // a capture is "running"
	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	if _, err := c.Capture(ctx, "x", ""); !errors.Is(err, ErrBusy) {
		t.Fatalf("err = %v, want ErrBusy", err)
	}
	if _, err := c.ConnectionsOf(ctx, nil); !errors.Is(err, ErrBusy) {
		t.Fatalf("ConnectionsOf err = %v, want ErrBusy", err)
	}
}

func TestConnectionsOf(t *testing.T) {
	listen, client := loopbackConn(t)
	c := NewCollector(Config{}, nil)
	got, err := c.ConnectionsOf(t.Context(), []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")})
	if err != nil {
		t.Fatal(err)
	}
	exe, _ := os.Executable()
	found := false
	for _, cn := range got {
		if !netip.MustParsePrefix("127.0.0.1/32").Contains(cn.Remote.Addr()) {
			t.Errorf("connection to %v outside the prefix", cn.Remote)
		}
		if cn.Local == client && cn.Remote == listen && cn.PID == int32(os.Getpid()) && cn.Exe == exe {
			found = true
		}
	}
	if !found {
		t.Errorf("connection %v->%v not in %+v", client, listen, got)
	}
	none, err := c.ConnectionsOf(t.Context(), []netip.Prefix{netip.MustParsePrefix("240.0.0.1/32")})
	if err != nil || len(none) != 0 {
		t.Errorf("unrelated prefix: %v, %v", none, err)
	}
}

func TestStoreWriteOnceAndVerify(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "evidence")
	now := func() time.Time { return time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC) }
	st, err := OpenStore(dir, now)
	if err != nil {
		t.Fatal(err)
	}
	s := &Snapshot{Reason: "r1", Trigger: "cli", Started: now()}
	rec, err := st.Save(s)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(rec.Path)
	if err != nil || fi.Mode().Perm() != 0o400 {
		t.Fatalf("stat %s: %v mode %v", rec.Path, err, fi.Mode())
	}
	data, _ := os.ReadFile(rec.Path)
	sum := sha256.Sum256(data)
	if rec.SHA256 != hex.EncodeToString(sum[:]) {
		t.Errorf("recorded hash %s is not the file's", rec.SHA256)
	}
	if _, err := st.Save(&Snapshot{ID: s.ID, Reason: "overwrite"}); !errors.Is(err, os.ErrExist) {
		t.Errorf("second save with same id: %v, want ErrExist", err)
	}
	if _, err := st.Verify(s.ID, rec.SHA256); err != nil {
		t.Errorf("verify intact: %v", err)
	}
	got, r2, err := st.Show(s.ID)
	if err != nil || got.Reason != "r1" || r2.SHA256 != rec.SHA256 || r2.Mode != "0400" {
		t.Errorf("show: %+v %+v %v", got, r2, err)
	}
	list, err := st.List()
	if err != nil || len(list) != 1 || list[0].ID != s.ID || list[0].Reason != "r1" {
		t.Errorf("list: %+v %v", list, err)
	}

	// Tamper: the hash no longer matches.
	if err := os.Chmod(rec.Path, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(rec.Path, append(data, ' '), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Verify(s.ID, rec.SHA256); !errors.Is(err, ErrTampered) {
		t.Errorf("verify tampered: %v, want ErrTampered", err)
	}
}

func TestStoreRejectsHostileIDs(t *testing.T) {
	st, err := OpenStore(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"../../etc/shadow", "", "20260102T030405Z-0a1b2c3d/../x", "x.json"} {
		if _, _, err := st.Show(id); !errors.Is(err, ErrBadID) {
			t.Errorf("Show(%q) = %v, want ErrBadID", id, err)
		}
		if _, err := st.Save(&Snapshot{ID: id}); id != "" && !errors.Is(err, ErrBadID) {
			t.Errorf("Save(%q) = %v, want ErrBadID", id, err)
		}
	}
	if _, _, err := st.Show("20260102T030405Z-0a1b2c3d"); !errors.Is(err, ErrNotFound) {
		t.Errorf("missing: %v, want ErrNotFound", err)
	}
	// A symlink planted under an evidence name is refused, not followed.
	target := filepath.Join(t.TempDir(), "secret")
	os.WriteFile(target, []byte(`{"reason":"x"}`), 0o600)
	os.Symlink(target, filepath.Join(st.Dir(), "20260102T030405Z-0a1b2c3e.json"))
	if _, _, err := st.Show("20260102T030405Z-0a1b2c3e"); err == nil {
		t.Errorf("symlinked evidence was followed")
	}
}

func TestConfigValidate(t *testing.T) {
	bad := []Config{{Timeout: -1}, {MaxProcesses: 1 << 20}, {MaxCmdline: -1}, {BlockTimeout: api.Duration(time.Hour)}}
	for _, c := range bad {
		if c.Validate() == nil {
			t.Errorf("%+v validated", c)
		}
	}
	d := Config{}.WithDefaults()
	if d.Validate() != nil || !d.AutoOnLockdown() || d.Timeout.D() != DefaultTimeout {
		t.Errorf("defaults: %+v", d)
	}
}
