package integrity

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/parryhq/parry/test/netns"
)

// attribWatcher runs a watcher with attribution on dir; it skips when
// fanotify is unavailable here (not root, no CAP_SYS_ADMIN, old kernel).
func attribWatcher(t *testing.T, dir string) (*Monitor, *collector) {
	t.Helper()
	requireRoot(t)
	cfg := testConfig(dir)
	on := true
	cfg.Attribution = &on
	col := &collector{}
	m := startWatcher(t, cfg, col)
	if st := statusWithin(t, m, 5*time.Second); st.Attribution != "on" {
		t.Skipf("attribution %s", st.Attribution)
	}
	return m, col
}

// holdWriter starts `sh -c 'echo x >> path; read _'` (under prefix, e.g.
// setpriv): a known process that writes and then lives until its stdin
// is closed.
func holdWriter(t *testing.T, path string, prefix ...string) (*exec.Cmd, io.WriteCloser) {
	t.Helper()
	args := append(prefix, "sh", "-c", `echo x >> "$1"; read _`, "sh", path)
	cmd := exec.Command(args[0], args[1:]...)
	stdin, err := cmd.StdinPipe()
	must(t, err)
	must(t, cmd.Start())
	t.Cleanup(func() { stdin.Close(); _ = cmd.Wait() })
	return cmd, stdin
}

func waitActor(t *testing.T, col *collector, p string) *Actor {
	t.Helper()
	var a *Actor
	netns.Eventually(t, 5*time.Second, "finding for "+p, func() bool {
		for _, f := range col.snapshot() {
			if f.Path == p {
				a = f.Actor
				return true
			}
		}
		return false
	})
	return a
}

func shExe(t *testing.T) string {
	exe, err := filepath.EvalSymlinks("/bin/sh")
	must(t, err)
	return exe
}

// A known process editing a watched file is named: pid, executable, uid,
// login uid, unit and parent.
func TestAttributionNamesTheProcess(t *testing.T) {
	dir := t.TempDir()
	_, col := attribWatcher(t, dir)
	p := filepath.Join(dir, "sshd_config")
	cmd, _ := holdWriter(t, p)
	a := waitActor(t, col, p)
	if a == nil || a.Exited {
		t.Fatalf("actor %+v", a)
	}
	if int(a.PID) != cmd.Process.Pid || a.Exe != shExe(t) || a.UID != 0 || a.User != "root" {
		t.Errorf("actor %+v, want pid %d exe %s uid 0", a, cmd.Process.Pid, shExe(t))
	}
	if len(a.Parents) == 0 || int(a.Parents[0].PID) != os.Getpid() {
		t.Errorf("parents %+v, want this test (%d) first", a.Parents, os.Getpid())
	}
	if b, err := os.ReadFile("/proc/self/cgroup"); err == nil && a.Unit != unitOf(string(b)) {
		t.Errorf("unit %q, want %q", a.Unit, unitOf(string(b)))
	}
	if !strings.Contains(a.Cmdline, "echo x") {
		t.Errorf("cmdline %q", a.Cmdline)
	}
	t.Logf("actor: %s", a)
}

// A process that exits at once is reported as exited or as itself, never
// as another process.
func TestAttributionExitedNeverMisattributed(t *testing.T) {
	dir := t.TempDir()
	_, col := attribWatcher(t, dir)
	exited, named := 0, 0
	for i := range 30 {
		p := filepath.Join(dir, fmt.Sprintf("quick-%d", i))
		cmd := exec.Command("sh", "-c", `echo x >> "$1"`, "sh", p)
		must(t, cmd.Run())
		a := waitActor(t, col, p)
		switch {
		case a == nil:
			t.Errorf("%s: no actor", p)
		case int(a.PID) != cmd.Process.Pid:
			t.Errorf("%s: pid %d, the writer was %d", p, a.PID, cmd.Process.Pid)
		case a.Exited:
			exited++
		case a.Exe != shExe(t):
			t.Errorf("%s: named %s, the writer was sh", p, a.Exe)
		default:
			named++
		}
	}
	t.Logf("30 short-lived writers: %d named, %d reported exited", named, exited)
}

// An edit by a throwaway user (setpriv --reuid) shows that user's uid.
func TestAttributionThrowawayUser(t *testing.T) {
	requireRoot(t)
	if _, err := exec.LookPath("setpriv"); err != nil {
		t.Skip("no setpriv")
	}
	dir := t.TempDir()
	for _, d := range []string{filepath.Dir(dir), dir} {
		must(t, os.Chmod(d, 0o755))
	}
	open := filepath.Join(dir, "shared")
	must(t, os.Mkdir(open, 0o777))
	must(t, os.Chmod(open, 0o777))
	_, col := attribWatcher(t, dir)
	name := netns.UniqueName("pw")
	if out, err := exec.Command("useradd", "--system", "--no-create-home", "--user-group", "--shell", "/usr/sbin/nologin", name).CombinedOutput(); err != nil {
		t.Fatalf("useradd %s: %v: %s", name, err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("userdel", name).CombinedOutput(); err != nil {
			t.Errorf("userdel %s: %v: %s", name, err, out)
		}
	})
	u, err := user.Lookup(name)
	must(t, err)
	p := filepath.Join(open, "planted")
	cmd, _ := holdWriter(t, p, "setpriv", "--reuid="+u.Uid, "--regid="+u.Gid, "--clear-groups", "--")
	a := waitActor(t, col, p)
	if a == nil || a.Exited {
		t.Fatalf("actor %+v", a)
	}
	if strconv.Itoa(int(a.UID)) != u.Uid || a.User != name || int(a.PID) != cmd.Process.Pid {
		t.Errorf("actor %+v, want uid %s (%s) pid %d", a, u.Uid, name, cmd.Process.Pid)
	}
	if b, err := os.ReadFile("/proc/self/loginuid"); err == nil {
		want, _ := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
		if want == 4294967295 {
			want = -1
		}
		if a.LoginUID != want {
			t.Errorf("login uid %d, want %d (kept across setpriv)", a.LoginUID, want)
		}
	}
}

// A finding made without a fanotify event (attribution off) has no actor.
func TestNoAttributionNoActor(t *testing.T) {
	dir := t.TempDir()
	col := &collector{}
	m := startWatcher(t, testConfig(dir), col)
	if st := statusWithin(t, m, 5*time.Second); st.Attribution != "off" {
		t.Fatalf("attribution %q with integrity.attribution unset", st.Attribution)
	}
	p := filepath.Join(dir, "f")
	writeFile(t, p, "x")
	if a := waitActor(t, col, p); a != nil {
		t.Fatalf("actor %+v", a)
	}
}

// BenchmarkAttribution prints the watcher's CPU time per second under
// 1,000 changes/s from another process, with attribution off and on, and
// the share of changes by processes living ≥ 50 ms attributed to them.
// Bounded: 3 s of changes per mode, 100 writers.
//
//	go test -run '^$' -bench BenchmarkAttribution -benchtime 1x ./integrity/
func BenchmarkAttribution(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Skip("needs root")
	}
	cpu := map[bool]float64{}
	for _, on := range []bool{false, true} {
		dir := b.TempDir()
		for i := range 100 {
			if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("f%d", i)), nil, 0o644); err != nil {
				b.Fatal(err)
			}
		}
		cfg := testConfig(dir)
		cfg.Attribution = &on
		col := &collector{}
		m, err := NewMonitor(cfg, Options{StateDir: b.TempDir(), Report: col.report})
		if err != nil {
			b.Fatal(err)
		}
		if _, err := m.Baseline(context.Background()); err != nil {
			b.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- m.Run(ctx) }()
		for st, _ := m.Status(ctx); !st.Running; st, _ = m.Status(ctx) {
			time.Sleep(10 * time.Millisecond) // benchmark set-up, not a test's synchronisation
		}
		if st, _ := m.Status(ctx); on && st.Attribution != "on" {
			b.Skipf("attribution %s", st.Attribution)
		}
		// A writer process: 1,000 appends a second over 100 files for 3 s.
		script := `i=0; end=$(( $(date +%s) + 3 )); while [ $(date +%s) -lt $end ]; do
			j=0; while [ $j -lt 100 ]; do echo x >> "$1/f$j"; j=$((j+1)); done; sleep 0.1; done`
		var before, after syscall.Rusage
		syscall.Getrusage(syscall.RUSAGE_SELF, &before)
		start := time.Now()
		if out, err := exec.Command("sh", "-c", script, "sh", dir).CombinedOutput(); err != nil {
			b.Fatalf("writer: %v %s", err, out)
		}
		el := time.Since(start)
		syscall.Getrusage(syscall.RUSAGE_SELF, &after)
		used := time.Duration(after.Utime.Nano()+after.Stime.Nano()-before.Utime.Nano()-before.Stime.Nano()) * time.Nanosecond
		cpu[on] = used.Seconds() / el.Seconds()
		st, _ := m.Status(ctx)
		b.Logf("attribution %-5v: watcher CPU %.1f%% of one core over %s (%d inotify events, %d fanotify events)", on, 100*cpu[on], el.Round(time.Millisecond), st.Events, st.AttributionEvents)
		if on {
			attributedShare(b, dir, col)
		}
		cancel()
		<-done
	}
	if cpu[false] > 0 {
		fmt.Printf("attribution CPU overhead at 1000 changes/s: %.1f%% -> %.1f%% of one core (+%.0f%% relative)\n",
			100*cpu[false], 100*cpu[true], 100*(cpu[true]-cpu[false])/cpu[false])
	}
}

// attributedShare starts 100 writers that live ≥ 50 ms, each creating its
// own file, and prints the share whose finding names it.
func attributedShare(b *testing.B, dir string, col *collector) {
	const n = 100
	pids := map[string]int{}
	for i := range n {
		p := filepath.Join(dir, fmt.Sprintf("w%d", i))
		cmd := exec.Command("sh", "-c", `echo x >> "$1"; sleep 0.05`, "sh", p)
		if err := cmd.Start(); err != nil {
			b.Fatal(err)
		}
		pids[p] = cmd.Process.Pid
		if i%4 == 3 {
			_ = cmd.Wait()
		} else {
			defer cmd.Wait()
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	right, wrong := 0, 0
	for time.Now().Before(deadline) {
		right, wrong = 0, 0
		seen := 0
		for _, f := range col.snapshot() {
			want, ok := pids[f.Path]
			if !ok || f.Kind != KindAdded {
				continue
			}
			seen++
			if f.Actor != nil && !f.Actor.Exited && int(f.Actor.PID) == want {
				right++
			} else if f.Actor != nil && !f.Actor.Exited {
				wrong++
			}
		}
		if seen == n {
			break
		}
		time.Sleep(50 * time.Millisecond) // benchmark polling
	}
	fmt.Printf("attributed to the right process: %d of %d writers living >= 50ms (%.0f%%), misattributed %d\n", right, n, 100*float64(right)/n, wrong)
}

// Without CAP_SYS_ADMIN (a child of this test with it dropped from its
// bounding set, as under the shipped unit) attribution is unavailable, the
// status says why, and the inotify watcher reports changes as before,
// without an actor.
func TestAttributionUnavailableFallsBack(t *testing.T) {
	if os.Getenv("PARRY_TEST_NO_SYS_ADMIN") == "" {
		requireRoot(t)
		if _, err := exec.LookPath("setpriv"); err != nil {
			t.Skip("no setpriv")
		}
		exe, err := os.Executable()
		must(t, err)
		cmd := exec.Command("setpriv", "--bounding-set=-sys_admin", "--", exe, "-test.run=^TestAttributionUnavailableFallsBack$", "-test.count=1", "-test.v")
		cmd.Env = append(os.Environ(), "PARRY_TEST_NO_SYS_ADMIN=1")
		out, err := cmd.CombinedOutput()
		if err != nil || !strings.Contains(string(out), "--- PASS: TestAttributionUnavailableFallsBack") {
			t.Fatalf("child: %v\n%s", err, out)
		}
		t.Logf("child:\n%s", out)
		return
	}
	dir := t.TempDir()
	cfg := testConfig(dir)
	on := true
	cfg.Attribution = &on
	col := &collector{}
	m := startWatcher(t, cfg, col)
	st := statusWithin(t, m, 5*time.Second)
	if !strings.HasPrefix(st.Attribution, "unavailable: fanotify_init: ") {
		t.Fatalf("attribution %q without CAP_SYS_ADMIN", st.Attribution)
	}
	t.Logf("status attribution: %s", st.Attribution)
	p := filepath.Join(dir, "f")
	writeFile(t, p, "x")
	if a := waitActor(t, col, p); a != nil {
		t.Fatalf("actor %+v", a)
	}
}
