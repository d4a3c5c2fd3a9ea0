package integrity

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// describe reads a process from a /proc tree: here a fake one, with a
// command name that tries to fake the stat fields and a logind session.
func TestDescribeFromProc(t *testing.T) {
	root := t.TempDir()
	sessions := t.TempDir()
	proc := func(pid, file, content string) {
		t.Helper()
		writeFile(t, filepath.Join(root, pid, file), content)
	}
	proc("4242", "stat", "4242 (vim) 1 2) S 4200 4242 4200 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 1 0 987654 0 0\n")
	proc("4242", "cmdline", "vim\x00/etc/ssh/sshd_config\x00")
	proc("4242", "status", "Name:\tvim\nUid:\t1000\t0\t0\t0\nGid:\t1000\t1000\t1000\t1000\n")
	proc("4242", "loginuid", "1000")
	proc("4242", "sessionid", "7")
	proc("4242", "cgroup", "0::/user.slice/user-1000.slice/session-7.scope\n")
	must(t, os.Symlink("/usr/bin/vim.basic", filepath.Join(root, "4242", "exe")))
	proc("4200", "stat", "4200 (bash) S 1 4200 4200 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 98765 0 0\n")
	must(t, os.Symlink("/usr/bin/bash", filepath.Join(root, "4200", "exe")))
	proc("1", "stat", "1 (systemd) S 0 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 1 0 0\n")
	writeFile(t, filepath.Join(sessions, "7"), "UID=1000\nUSER=alice\nSERVICE=sshd\nREMOTE_HOST=198.51.100.4\n")

	pr := newProcReader()
	pr.proc, pr.runSessions = root, sessions
	pr.users[0], pr.users[1000] = "root", "alice"
	var a Actor
	if !pr.describe(4242, &a) {
		t.Fatal("describe: gone")
	}
	want := Actor{PID: 4242, Exe: "/usr/bin/vim.basic", Cmdline: "vim /etc/ssh/sshd_config", UID: 0, User: "root",
		LoginUID: 1000, LoginUser: "alice", Session: "7", Unit: "session-7.scope", Remote: "198.51.100.4", LoginService: "sshd",
		Parents: []ActorParent{{PID: 4200, Exe: "/usr/bin/bash"}, {PID: 1}}}
	if got, w := jsonOf(t, a), jsonOf(t, want); got != w {
		t.Errorf("actor\n got %s\nwant %s", got, w)
	}
	if s := a.String(); s != "pid 4242 /usr/bin/vim.basic (uid 0 root, login uid 1000 alice, sshd session from 198.51.100.4, unit session-7.scope)" {
		t.Errorf("String: %s", s)
	}
	ppid, start, err := pr.stat(4242)
	if err != nil || ppid != 4200 || start != 987654 {
		t.Errorf("stat: ppid %d start %d %v", ppid, start, err)
	}
	if pr.describe(999, &a) {
		t.Error("a pid without /proc entry described")
	}
	if !pr.startedAfter(uint64(time.Since(pr.boot).Seconds()+5)*100, time.Now()) {
		t.Error("a process started after the event counts as its actor")
	}
	for in, want := range map[string]string{
		"0::/system.slice/cron.service\n":             "cron.service",
		"0::/system.slice/docker.service/sub/leaf\n":  "docker.service",
		"1:name=systemd:/x.service\n0::/\n":           "",
		"0::/user.slice/user-0.slice/session-3.scope": "session-3.scope",
	} {
		if got := unitOf(in); got != want {
			t.Errorf("unitOf(%q) = %q, want %q", in, got, want)
		}
	}
	// A session id that tries to leave the sessions directory is not read.
	if r, _ := pr.session("session-../7.scope"); r != "" {
		t.Errorf("session path escaped: %q", r)
	}
}

func jsonOf(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	must(t, err)
	return string(b)
}
