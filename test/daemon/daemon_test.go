package daemon_test

import (
	"fmt"
	"os"
	"runtime"
	"strings"
	"testing"

	"github.com/parryhq/parry/test/daemon"
	"github.com/parryhq/parry/test/netns"
	"github.com/parryhq/parry/test/parrybin"
)

func TestMain(m *testing.M) {
	code := m.Run()
	parrybin.Remove()
	os.Exit(code)
}

// fatalT records the first Fatal instead of failing the real test; the rest
// (TempDir, Cleanup, Logf) is the real test's.
type fatalT struct {
	testing.TB
	msg string
}

func (f *fatalT) Fatal(args ...any) { f.msg = fmt.Sprint(args...); runtime.Goexit() }
func (f *fatalT) Fatalf(format string, args ...any) {
	f.msg = fmt.Sprintf(format, args...)
	runtime.Goexit()
}

// A parryd that exits during start fails Start at once, with its output.
func TestStartReportsEarlyExit(t *testing.T) {
	ns := netns.New(t)
	ft := &fatalT{TB: t}
	d := daemon.New(ft, ns, daemon.Options{Config: "no_such_key: 1\n"})
	done := make(chan struct{})
	go func() { defer close(done); d.Start() }()
	<-done
	if !strings.Contains(ft.msg, "exited") || !strings.Contains(ft.msg, "no_such_key") {
		t.Fatalf("Start with a refused config: %q; want the exit and parryd's message", ft.msg)
	}
	if d.Alive() {
		t.Fatal("parryd still running")
	}
}

// Start waits for READY=1, the CLI answers, Kill ends it at once and a new
// Start brings it back on the same state.
func TestStartStopKill(t *testing.T) {
	ns := netns.New(t)
	d := daemon.New(t, ns, daemon.Options{Config: "integrity:\n  enabled: false\n"})
	d.Start()
	if d.ReadyAfter() <= 0 || d.PID() == 0 {
		t.Fatalf("ready after %v, pid %d", d.ReadyAfter(), d.PID())
	}
	d.MustParry("block", "203.0.113.7", "--for", "1h")
	d.Kill()
	if d.Alive() || d.ExitCode() != -1 {
		t.Fatalf("after Kill: alive %v, exit %d", d.Alive(), d.ExitCode())
	}
	d.Start()
	if out := d.MustParry("list"); !strings.Contains(out, "203.0.113.7") {
		t.Fatalf("list after a restart: %q", out)
	}
	if ev := d.AuditEvents("start"); len(ev) != 2 {
		t.Fatalf("%d start events in the audit log, want 2: %v", len(ev), ev)
	}
	d.Stop()
	if d.Alive() || d.ExitCode() != 0 {
		t.Fatalf("after Stop: alive %v, exit %d", d.Alive(), d.ExitCode())
	}
}

// RunOnce runs parryd to completion on the daemon's files: --check-config
// passes on the written config and fails, naming the key, on a bad one.
func TestRunOnce(t *testing.T) {
	ns := netns.New(t)
	d := daemon.New(t, ns, daemon.Options{Config: "integrity:\n  enabled: false\n"})
	if out, code := d.RunOnce("--check-config"); code != 0 || !strings.Contains(out, "config ok") {
		t.Fatalf("--check-config on a good config: exit %d %q", code, out)
	}
	d.WriteConfig("bogus_key: 1\n")
	if out, code := d.RunOnce("--check-config"); code != 1 || !strings.Contains(out, "bogus_key") {
		t.Fatalf("--check-config on a bad config: exit %d %q", code, out)
	}
}
