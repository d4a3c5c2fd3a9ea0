package integrity

import (
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"os"
	"os/user"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Actor is the process behind a change, as fanotify named it and /proc
// described it when the event was read. Everything but PID, Exited and
// Time comes from the process itself and is attacker-controlled text.
type Actor struct {
	PID int32 `json:"pid"`
	// Exited: the process was gone (or its pid no longer its own) by the
	// time the event was read; nothing else is known of it.
	Exited  bool   `json:"exited,omitempty"`
	Exe     string `json:"exe,omitempty"`
	Cmdline string `json:"cmdline,omitempty"`
	UID     uint32 `json:"uid"` // effective uid
	User    string `json:"user,omitempty"`
	// LoginUID is the audit login uid (who logged in, kept across sudo and
	// su); -1 when unset (a daemon started at boot).
	LoginUID  int64  `json:"login_uid"`
	LoginUser string `json:"login_user,omitempty"`
	Session   string `json:"session,omitempty"` // audit session id
	Unit      string `json:"unit,omitempty"`    // systemd unit, from /proc/PID/cgroup
	// Remote is the remote host of the login session (logind's
	// REMOTE_HOST: an address, or a name sshd resolved), and
	// LoginService the PAM service it logged in through (sshd, login...),
	// when Unit is a session scope.
	Remote       string `json:"remote,omitempty"`
	LoginService string `json:"login_service,omitempty"`
	// Parents is the parent chain, nearest first, at most MaxActorParents.
	Parents []ActorParent `json:"parents,omitempty"`
	Event   string        `json:"event"` // modify, attrib, create, delete, moved_from, moved_to
	Time    time.Time     `json:"time"`  // when the event was read
}

// ActorParent is one ancestor of an Actor.
type ActorParent struct {
	PID int32  `json:"pid"`
	Exe string `json:"exe,omitempty"`
}

// MaxActorParents bounds the parent chain recorded.
const MaxActorParents = 6

const maxCmdline = 1024

// String is the actor in one line: "pid 4242 /usr/bin/vim.basic (uid 1000
// alice, login uid 1000, unit session-7.scope)".
func (a *Actor) String() string {
	if a == nil {
		return "actor unknown"
	}
	if a.Exited {
		return fmt.Sprintf("pid %d (exited before it could be identified)", a.PID)
	}
	s := fmt.Sprintf("pid %d %s (uid %d", a.PID, a.Exe, a.UID)
	if a.User != "" {
		s += " " + a.User
	}
	if a.LoginUID >= 0 && a.LoginUID != int64(a.UID) {
		s += fmt.Sprintf(", login uid %d", a.LoginUID)
		if a.LoginUser != "" {
			s += " " + a.LoginUser
		}
	}
	if a.Remote != "" {
		s += ", " + cmp.Or(a.LoginService, "login") + " session from " + a.Remote
	}
	if a.Unit != "" {
		s += ", unit " + a.Unit
	}
	return s + ")"
}

// procReader resolves pids through /proc, with a small cache of user
// names. Safe for use by one goroutine.
type procReader struct {
	proc        string // "/proc"
	runSessions string // "/run/systemd/sessions": logind's session files
	boot        time.Time
	tick        float64 // clock ticks per second (USER_HZ)
	users       map[uint32]string
	buf         []byte
	// cache: what describe said of a process, by pid, reused for events
	// of the same process (same start time and executable) within
	// actorCacheTTL: one writer making a thousand changes a second is
	// described a few times a second, not a thousand.
	cache map[int32]cachedActor
	byIno map[uint64]cachedActor // by pidfd inode, where pidfds are pidfs
}

type cachedActor struct {
	start uint64
	exe   string
	at    time.Time
	actor Actor
}

// actorCacheTTL bounds how stale a cached description may be (a changed
// command line, uid or unit shows after at most this long).
const actorCacheTTL = 500 * time.Millisecond

func (pr *procReader) exe(pid int32) (string, error) {
	return os.Readlink(pr.proc + "/" + strconv.Itoa(int(pid)) + "/exe")
}

func newProcReader() *procReader {
	pr := &procReader{proc: "/proc", runSessions: "/run/systemd/sessions", tick: 100, users: map[uint32]string{}, buf: make([]byte, 4096), cache: map[int32]cachedActor{}, byIno: map[uint64]cachedActor{}}
	var info unix.Sysinfo_t
	if unix.Sysinfo(&info) == nil {
		// Boot time is good to the second here; start times are compared
		// with a second of slack.
		pr.boot = time.Now().Add(-time.Duration(info.Uptime) * time.Second)
	}
	return pr
}

var usersMu sync.Mutex

func (pr *procReader) userName(uid uint32) string {
	if n, ok := pr.users[uid]; ok {
		return n
	}
	usersMu.Lock()
	u, err := user.LookupId(strconv.FormatUint(uint64(uid), 10))
	usersMu.Unlock()
	name := ""
	if err == nil {
		name = u.Username
	}
	if len(pr.users) > 1024 {
		clear(pr.users)
	}
	pr.users[uid] = name
	return name
}

func (pr *procReader) read(pid int32, file string, limit int) ([]byte, error) {
	f, err := os.Open(pr.proc + "/" + strconv.Itoa(int(pid)) + "/" + file)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if cap(pr.buf) < limit {
		pr.buf = make([]byte, limit)
	}
	n, err := f.Read(pr.buf[:limit])
	if err != nil && n == 0 {
		return nil, err
	}
	return pr.buf[:n], nil
}

// stat returns the parent pid and start time (clock ticks after boot)
// from /proc/PID/stat.
func (pr *procReader) stat(pid int32) (ppid int32, start uint64, err error) {
	b, err := pr.read(pid, "stat", 1024)
	if err != nil {
		return 0, 0, err
	}
	// The command name is in parentheses and may hold anything: fields
	// start after the last ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, 0, errors.New("bad stat")
	}
	fs := strings.Fields(string(b[i+1:]))
	if len(fs) < 20 { // state ppid ... starttime is field 22 of the line, 20th here
		return 0, 0, errors.New("bad stat")
	}
	p, err1 := strconv.ParseInt(fs[1], 10, 32)
	st, err2 := strconv.ParseUint(fs[19], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, 0, errors.New("bad stat")
	}
	return int32(p), st, nil
}

// kernelThread reports whether pid is a kernel thread (PF_KTHREAD in the
// flags of /proc/PID/stat): it has no executable.
func (pr *procReader) kernelThread(pid int32) bool {
	b, err := pr.read(pid, "stat", 1024)
	if err != nil {
		return false
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return false
	}
	fs := strings.Fields(string(b[i+1:]))
	if len(fs) < 7 {
		return false
	}
	flags, err := strconv.ParseUint(fs[6], 10, 64)
	return err == nil && flags&0x00200000 != 0
}

// startedAfter reports whether a process with start time start (ticks)
// began after t (with a second of slack): then it is not the one behind
// an event read at t.
func (pr *procReader) startedAfter(start uint64, t time.Time) bool {
	if pr.boot.IsZero() {
		return false
	}
	started := pr.boot.Add(time.Duration(float64(start) / pr.tick * float64(time.Second)))
	return started.After(t.Add(time.Second))
}

// describe fills a with what /proc says of pid now. It returns false when
// the pid is gone.
func (pr *procReader) describe(pid int32, a *Actor) bool {
	a.PID = pid
	exe, err := os.Readlink(pr.proc + "/" + strconv.Itoa(int(pid)) + "/exe")
	if err != nil && errors.Is(err, os.ErrNotExist) {
		if _, err := pr.read(pid, "stat", 64); err != nil {
			return false
		}
	}
	a.Exe = clip(exe, 4096) // "" for kernel threads
	if b, err := pr.read(pid, "cmdline", maxCmdline); err == nil {
		a.Cmdline = clip(strings.TrimRight(strings.ReplaceAll(string(b), "\x00", " "), " "), maxCmdline)
	}
	if b, err := pr.read(pid, "status", 4096); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if rest, ok := strings.CutPrefix(line, "Uid:"); ok {
				if fs := strings.Fields(rest); len(fs) >= 2 {
					if u, err := strconv.ParseUint(fs[1], 10, 32); err == nil {
						a.UID = uint32(u)
					}
				}
				break
			}
		}
	} else {
		return false
	}
	a.User = pr.userName(a.UID)
	a.LoginUID = -1
	if b, err := pr.read(pid, "loginuid", 32); err == nil {
		if u, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 32); err == nil && u != 4294967295 {
			a.LoginUID = int64(u)
			a.LoginUser = pr.userName(uint32(u))
		}
	}
	if b, err := pr.read(pid, "sessionid", 32); err == nil {
		if s := strings.TrimSpace(string(b)); s != "4294967295" && s != "" {
			a.Session = clip(s, 32)
		}
	}
	if b, err := pr.read(pid, "cgroup", 4096); err == nil {
		a.Unit = unitOf(string(b))
	}
	a.Remote, a.LoginService = pr.session(a.Unit)
	pp, _, err := pr.stat(pid)
	for i := 0; err == nil && pp > 0 && i < MaxActorParents; i++ {
		p := ActorParent{PID: pp}
		exe, _ := os.Readlink(pr.proc + "/" + strconv.Itoa(int(pp)) + "/exe")
		p.Exe = clip(exe, 4096)
		a.Parents = append(a.Parents, p)
		if pp == 1 {
			break
		}
		pp, _, err = pr.stat(pp)
	}
	return true
}

// session reads logind's record of the session whose scope is unit
// ("session-7.scope"): its remote host and PAM service.
func (pr *procReader) session(unit string) (remote, service string) {
	id, ok1 := strings.CutPrefix(unit, "session-")
	id, ok2 := strings.CutSuffix(id, ".scope")
	if !ok1 || !ok2 || id == "" || strings.ContainsAny(id, "/.") {
		return "", ""
	}
	f, err := os.Open(pr.runSessions + "/" + id)
	if err != nil {
		return "", ""
	}
	defer f.Close()
	b := make([]byte, 8192)
	n, _ := f.Read(b)
	for _, line := range strings.Split(string(b[:n]), "\n") {
		if v, ok := strings.CutPrefix(line, "REMOTE_HOST="); ok {
			remote = clip(v, 256)
		} else if v, ok := strings.CutPrefix(line, "SERVICE="); ok {
			service = clip(v, 64)
		}
	}
	return remote, service
}

// unitOf is the systemd unit in /proc/PID/cgroup's unified line: the last
// path component naming a .service or .scope (nested cgroups below a
// service are allowed).
func unitOf(cgroup string) string {
	for _, line := range strings.Split(cgroup, "\n") {
		path, ok := strings.CutPrefix(line, "0::")
		if !ok {
			continue
		}
		parts := strings.Split(path, "/")
		for i := len(parts) - 1; i >= 0; i-- {
			if strings.HasSuffix(parts[i], ".service") || strings.HasSuffix(parts[i], ".scope") {
				return clip(parts[i], 256)
			}
		}
	}
	return ""
}
