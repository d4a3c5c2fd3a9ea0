package integrity

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Attribution: fanotify runs beside the inotify watcher as a side channel.
// The watcher stays what it is (inotify events, debounced per path, the
// verdict from re-stat'ing and re-hashing); fanotify only answers "who":
// every directory the watcher watches also gets a fanotify mark, each
// fanotify event is resolved at once from /proc to the process behind it,
// and the result is kept per path for a short while. A finding about a
// path takes the latest actor seen for it within that while.

const fanMask = unix.FAN_MODIFY | unix.FAN_ATTRIB | unix.FAN_CREATE | unix.FAN_DELETE |
	unix.FAN_MOVED_FROM | unix.FAN_MOVED_TO | unix.FAN_EVENT_ON_CHILD | unix.FAN_ONDIR

// Bounds of the attribution table.
const (
	attribPaths   = 8192 // paths with recent actors
	attribPerPath = 4    // actors kept per path
)

// actors is the attribution table: recent actors by path. Its lock is a
// leaf: held only to read or update the maps.
type actors struct {
	mu     sync.Mutex
	byPath map[string][]Actor
	events uint64 // fanotify events read
	lost   uint64 // fanotify queue overflows
}

func (t *actors) add(path string, a Actor) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if _, ok := t.byPath[path]; !ok && len(t.byPath) >= attribPaths {
		cut := a.Time.Add(-time.Minute)
		for p, as := range t.byPath {
			if as[len(as)-1].Time.Before(cut) {
				delete(t.byPath, p)
			}
		}
		if len(t.byPath) >= attribPaths {
			clear(t.byPath) // a flood: attribution of what came before is lost
		}
	}
	as := append(t.byPath[path], a)
	if len(as) > attribPerPath {
		as = append(as[:0], as[len(as)-attribPerPath:]...)
	}
	t.byPath[path] = as
}

// latest is the most recent actor of path seen at or after since.
func (t *actors) latest(path string, since time.Time) *Actor {
	if t == nil {
		return nil
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	as := t.byPath[path]
	if len(as) == 0 || as[len(as)-1].Time.Before(since) {
		return nil
	}
	a := as[len(as)-1]
	return &a
}

// fanotifySource is an EventSource (inotify) that also marks every watched
// directory for fanotify and fills an attribution table.
type fanotifySource struct {
	EventSource
	fd     int
	pidfds bool // FAN_REPORT_PIDFD: exited processes are told apart exactly
	// pidfs: pidfds live on pidfs (Linux 6.9+), whose inode numbers name
	// one process for the system's lifetime: a cached description is
	// found by the event's pidfd inode alone.
	pidfs bool
	stop  int // eventfd waking the reader
	done  chan struct{}
	table *actors
	log   *slog.Logger

	mu       sync.Mutex
	dirs     map[string]string // fanotify dir handle key → directory
	keys     map[string]string // directory → handle key
	markErrs int
}

// newFanotifySource wraps inner. It fails where fanotify cannot attribute
// (no CAP_SYS_ADMIN, a kernel without FID reporting).
func newFanotifySource(inner EventSource, log *slog.Logger) (*fanotifySource, error) {
	const base = unix.FAN_CLASS_NOTIF | unix.FAN_CLOEXEC | unix.FAN_NONBLOCK |
		unix.FAN_REPORT_FID | unix.FAN_REPORT_DIR_FID | unix.FAN_REPORT_NAME
	pidfds := true
	fd, err := unix.FanotifyInit(base|unix.FAN_REPORT_PIDFD, unix.O_RDONLY|unix.O_LARGEFILE|unix.O_CLOEXEC)
	if errors.Is(err, unix.EINVAL) { // before Linux 5.15
		pidfds = false
		fd, err = unix.FanotifyInit(base, unix.O_RDONLY|unix.O_LARGEFILE|unix.O_CLOEXEC)
	}
	if err != nil {
		return nil, fmt.Errorf("fanotify_init: %w", err)
	}
	stop, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("eventfd: %w", err)
	}
	s := &fanotifySource{EventSource: inner, fd: fd, pidfds: pidfds, pidfs: pidfds && onPidfs(), stop: stop, done: make(chan struct{}),
		table: &actors{byPath: map[string][]Actor{}}, log: log, dirs: map[string]string{}, keys: map[string]string{}}
	go s.read()
	return s, nil
}

// onPidfs reports whether this kernel's pidfds are pidfs inodes.
func onPidfs() bool {
	fd, err := unix.PidfdOpen(unix.Getpid(), 0)
	if err != nil {
		return false
	}
	defer unix.Close(fd)
	var st unix.Statfs_t
	return unix.Fstatfs(fd, &st) == nil && st.Type == unix.PID_FS_MAGIC
}

func handleKey(fsid [8]byte, typ int32, h []byte) string {
	b := make([]byte, 0, 12+len(h))
	b = append(b, fsid[:]...)
	b = binary.LittleEndian.AppendUint32(b, uint32(typ))
	return string(append(b, h...))
}

func (s *fanotifySource) Add(dir string) error {
	if err := s.EventSource.Add(dir); err != nil {
		return err
	}
	s.mark(dir)
	return nil
}

func (s *fanotifySource) Remove(dir string) error {
	s.mu.Lock()
	if k, ok := s.keys[dir]; ok {
		delete(s.keys, dir)
		delete(s.dirs, k)
	}
	s.mu.Unlock()
	_ = unix.FanotifyMark(s.fd, unix.FAN_MARK_REMOVE|unix.FAN_MARK_ONLYDIR|unix.FAN_MARK_DONT_FOLLOW, fanMask, unix.AT_FDCWD, dir)
	return s.EventSource.Remove(dir)
}

// mark adds a fanotify mark on dir and learns its handle. A directory that
// cannot be marked (a file system without file handles) is still watched
// by inotify; its changes come without an actor.
func (s *fanotifySource) mark(dir string) {
	h, _, err := unix.NameToHandleAt(unix.AT_FDCWD, dir, 0)
	var st unix.Statfs_t
	if err == nil {
		err = unix.Statfs(dir, &st)
	}
	if err == nil {
		err = unix.FanotifyMark(s.fd, unix.FAN_MARK_ADD|unix.FAN_MARK_ONLYDIR|unix.FAN_MARK_DONT_FOLLOW, fanMask, unix.AT_FDCWD, dir)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err != nil {
		if s.markErrs == 0 {
			s.log.Warn("integrity attribution: directory not marked for fanotify; its changes come without an actor", "dir", dir, "err", err)
		}
		s.markErrs++
		return
	}
	var fsid [8]byte
	binary.LittleEndian.PutUint32(fsid[0:], uint32(st.Fsid.Val[0]))
	binary.LittleEndian.PutUint32(fsid[4:], uint32(st.Fsid.Val[1]))
	k := handleKey(fsid, h.Type(), h.Bytes())
	if old, ok := s.keys[dir]; ok {
		delete(s.dirs, old)
	}
	s.dirs[k], s.keys[dir] = dir, k
}

func (s *fanotifySource) Close() error {
	var one [8]byte
	binary.NativeEndian.PutUint64(one[:], 1)
	_, _ = unix.Write(s.stop, one[:])
	<-s.done
	unix.Close(s.fd)
	unix.Close(s.stop)
	return s.EventSource.Close()
}

// read reads fanotify events until Close and resolves each at once.
func (s *fanotifySource) read() {
	defer close(s.done)
	buf := make([]byte, 64<<10)
	pr := newProcReader()
	fds := []unix.PollFd{{Fd: int32(s.fd), Events: unix.POLLIN}, {Fd: int32(s.stop), Events: unix.POLLIN}}
	for {
		fds[0].Revents, fds[1].Revents = 0, 0
		if _, err := unix.Poll(fds, -1); err != nil && !errors.Is(err, unix.EINTR) {
			s.log.Warn("integrity attribution stopped", "err", err)
			return
		}
		if fds[1].Revents != 0 {
			return
		}
		for {
			n, err := unix.Read(s.fd, buf)
			if errors.Is(err, unix.EINTR) {
				continue
			}
			if err != nil || n <= 0 {
				break // EAGAIN: drained
			}
			now := time.Now()
			s.parse(buf[:n], now, pr)
		}
	}
}

const fanMetaLen = 24 // struct fanotify_event_metadata

// parse handles a buffer of events read at now.
func (s *fanotifySource) parse(b []byte, now time.Time, pr *procReader) {
	for len(b) >= fanMetaLen {
		evLen := int(binary.NativeEndian.Uint32(b[0:]))
		metaLen := int(binary.NativeEndian.Uint16(b[6:]))
		if evLen < fanMetaLen || evLen > len(b) || metaLen < fanMetaLen || metaLen > evLen {
			return
		}
		mask := binary.NativeEndian.Uint64(b[8:])
		pid := int32(binary.NativeEndian.Uint32(b[20:]))
		s.event(mask, pid, b[metaLen:evLen], now, pr)
		b = b[evLen:]
	}
}

func (s *fanotifySource) event(mask uint64, pid int32, info []byte, now time.Time, pr *procReader) {
	s.table.mu.Lock()
	s.table.events++
	if mask&unix.FAN_Q_OVERFLOW != 0 {
		s.table.lost++
	}
	s.table.mu.Unlock()
	pidfd := int32(unix.FAN_NOPIDFD)
	var paths []string
	for len(info) >= 4 {
		typ, ln := info[0], int(binary.NativeEndian.Uint16(info[2:]))
		if ln < 4 || ln > len(info) {
			break
		}
		rec := info[4:ln]
		switch typ {
		case unix.FAN_EVENT_INFO_TYPE_PIDFD:
			if len(rec) >= 4 {
				pidfd = int32(binary.NativeEndian.Uint32(rec))
			}
		case unix.FAN_EVENT_INFO_TYPE_DFID_NAME, unix.FAN_EVENT_INFO_TYPE_DFID, unix.FAN_EVENT_INFO_TYPE_OLD_DFID_NAME, unix.FAN_EVENT_INFO_TYPE_NEW_DFID_NAME:
			if p, ok := s.recordPath(rec, typ != unix.FAN_EVENT_INFO_TYPE_DFID); ok {
				paths = append(paths, p)
			}
		}
		info = info[ln:]
	}
	if pidfd >= 0 {
		defer unix.Close(int(pidfd))
	}
	if len(paths) == 0 || mask&unix.FAN_Q_OVERFLOW != 0 {
		return
	}
	a := s.resolve(pid, int(pidfd), now, pr)
	a.Event = eventName(mask)
	for _, p := range paths {
		s.table.add(p, a)
	}
}

// recordPath turns a (directory handle, name) record into a path under a
// marked directory.
func (s *fanotifySource) recordPath(rec []byte, named bool) (string, bool) {
	if len(rec) < 16 {
		return "", false
	}
	var fsid [8]byte
	copy(fsid[:], rec[:8])
	hlen := int(binary.NativeEndian.Uint32(rec[8:]))
	typ := int32(binary.NativeEndian.Uint32(rec[12:]))
	if hlen < 0 || 16+hlen > len(rec) {
		return "", false
	}
	k := handleKey(fsid, typ, rec[16:16+hlen])
	s.mu.Lock()
	dir, ok := s.dirs[k]
	s.mu.Unlock()
	if !ok {
		return "", false
	}
	if !named {
		return dir, true
	}
	name := rec[16+hlen:]
	for i, c := range name {
		if c == 0 {
			name = name[:i]
			break
		}
	}
	if len(name) == 0 || string(name) == "." {
		return dir, true
	}
	if dir == "/" {
		return "/" + string(name), true
	}
	return dir + "/" + string(name), true
}

// resolve describes the process behind an event read at now. It is never
// another process: with a pidfd, the description counts only if the
// process is still alive after it was read (so the pid was still its
// own); without one, a process that started after the event is not it.
func (s *fanotifySource) resolve(pid int32, pidfd int, now time.Time, pr *procReader) Actor {
	a := Actor{PID: pid, Time: now}
	if s.pidfds && pidfd < 0 {
		a.Exited = true // FAN_NOPIDFD: gone before the event was read
		return a
	}
	var ino uint64
	if s.pidfs {
		var st unix.Stat_t
		if unix.Fstat(pidfd, &st) == nil {
			ino = st.Ino
			if c, ok := pr.byIno[ino]; ok && now.Sub(c.at) < actorCacheTTL {
				a = c.actor // this very process, described a moment ago while alive
				a.Time = now
				return a
			}
		}
	}
	_, start, err := pr.stat(pid)
	if err != nil || (!s.pidfds && pr.startedAfter(start, now)) {
		return Actor{PID: pid, Time: now, Exited: true}
	}
	exe, err := pr.exe(pid)
	if err != nil && !pr.kernelThread(pid) {
		// A process on its way out has lost its memory map (and with it
		// /proc/PID/exe) before its pidfd says it exited.
		return Actor{PID: pid, Time: now, Exited: true}
	}
	if c, ok := pr.cache[pid]; ok && c.start == start && c.exe == exe && now.Sub(c.at) < actorCacheTTL {
		a = c.actor // the same process (pid, start time, executable), described a moment ago
		a.Time = now
	} else if !pr.describe(pid, &a) {
		return Actor{PID: pid, Time: now, Exited: true}
	} else {
		if len(pr.cache) >= 1024 {
			clear(pr.cache)
		}
		pr.cache[pid] = cachedActor{start: start, exe: exe, at: now, actor: a}
	}
	if s.pidfds {
		fds := []unix.PollFd{{Fd: int32(pidfd), Events: unix.POLLIN}}
		if n, err := unix.Poll(fds, 0); err != nil || n > 0 {
			return Actor{PID: pid, Time: now, Exited: true} // exited while it was read
		}
	} else if _, start2, err := pr.stat(pid); err != nil || start2 != start {
		return Actor{PID: pid, Time: now, Exited: true}
	}
	if ino != 0 {
		if len(pr.byIno) >= 1024 {
			clear(pr.byIno)
		}
		pr.byIno[ino] = cachedActor{start: start, exe: exe, at: now, actor: a}
	}
	return a
}

func eventName(mask uint64) string {
	switch {
	case mask&unix.FAN_CREATE != 0:
		return "create"
	case mask&unix.FAN_DELETE != 0:
		return "delete"
	case mask&unix.FAN_MOVED_FROM != 0:
		return "moved_from"
	case mask&unix.FAN_MOVED_TO != 0:
		return "moved_to"
	case mask&unix.FAN_ATTRIB != 0:
		return "attrib"
	}
	return "modify"
}
