package control

import (
	"fmt"
	"net"
	"os/user"
	"slices"
	"strconv"
	"sync"

	"golang.org/x/sys/unix"
	"golang.org/x/time/rate"
)

// Peer is the local process at the other end of a control connection,
// identified by SO_PEERCRED.
type Peer struct {
	UID    uint32
	GID    uint32
	PID    int32
	User   string
	Groups []string // names of the user's groups, primary first
	Admin  bool     // root or a member of control.admin_groups
	str    string   // String, rendered once by resolvePeer
}

// String is how the peer appears in decisions and the audit log.
func (p Peer) String() string {
	if p.str != "" {
		return p.str
	}
	return fmt.Sprintf("uid=%d(%s) pid=%d", p.UID, p.User, p.PID)
}

// peerCred reads SO_PEERCRED of a Unix connection.
func peerCred(c net.Conn) (Peer, error) {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return Peer{}, fmt.Errorf("peer credentials: not a unix socket")
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return Peer{}, fmt.Errorf("peer credentials: %w", err)
	}
	var cred *unix.Ucred
	var serr error
	if err := raw.Control(func(fd uintptr) {
		cred, serr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return Peer{}, fmt.Errorf("peer credentials: %w", err)
	}
	if serr != nil {
		return Peer{}, fmt.Errorf("peer credentials: %w", serr)
	}
	return Peer{UID: cred.Uid, GID: cred.Gid, PID: cred.Pid}, nil
}

// ResolvePeer fills in the user and group names and the admin flag.
func ResolvePeer(p Peer, adminGroups []string) Peer {
	p.User = strconv.FormatUint(uint64(p.UID), 10)
	gids := []string{strconv.FormatUint(uint64(p.GID), 10)}
	if u, err := user.LookupId(p.User); err == nil {
		p.User = u.Username
		if more, err := u.GroupIds(); err == nil {
			for _, g := range more {
				if !slices.Contains(gids, g) {
					gids = append(gids, g)
				}
			}
		}
	}
	for _, gid := range gids {
		name := gid
		if g, err := user.LookupGroupId(gid); err == nil {
			name = g.Name
		}
		p.Groups = append(p.Groups, name)
	}
	p.Admin = p.UID == 0
	for _, g := range adminGroups {
		if slices.Contains(p.Groups, g) {
			p.Admin = true
		}
	}
	p.str = ""
	p.str = p.String()
	return p
}

// peerLimiter is a token bucket per uid.
type peerLimiter struct {
	mu    sync.Mutex
	rate  rate.Limit
	burst int
	m     map[uint32]*rate.Limiter
}

func newPeerLimiter(r float64, burst int) *peerLimiter {
	return &peerLimiter{rate: rate.Limit(r), burst: burst, m: map[uint32]*rate.Limiter{}}
}

func (l *peerLimiter) allow(uid uint32) bool {
	l.mu.Lock()
	lim := l.m[uid]
	if lim == nil {
		if len(l.m) > 4096 { // bounded: forget everyone rather than grow
			clear(l.m)
		}
		lim = rate.NewLimiter(l.rate, l.burst)
		l.m[uid] = lim
	}
	l.mu.Unlock()
	return lim.Allow()
}

func (l *peerLimiter) reset(r float64, burst int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.rate, l.burst = rate.Limit(r), burst
	clear(l.m)
}

// connSlots counts the control connections: in all, and per uid. It owns
// its counters and their lock; the accept loop and the connection
// goroutines only call its methods.
type connSlots struct {
	mu    sync.Mutex
	total int            // connections being served
	byUID map[uint32]int // open connections per uid other than root, served or being admitted
	max   int            // control.max_connections (fixed while serving)
}

func newConnSlots(max int) *connSlots {
	return &connSlots{max: max, byUID: map[uint32]int{}}
}

// enterUID counts a new connection of uid before its peer is resolved;
// false: uid (not root) already has perUID connections. Each true is
// matched by one leaveUID.
func (s *connSlots) enterUID(uid uint32, perUID int) bool {
	if uid == 0 {
		return true
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.byUID[uid] >= perUID {
		return false
	}
	s.byUID[uid]++
	return true
}

func (s *connSlots) leaveUID(uid uint32) {
	if uid == 0 {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.byUID[uid]--; s.byUID[uid] <= 0 {
		delete(s.byUID, uid) // bounded by the connections open now
	}
}

// take claims a slot for a resolved peer: admins may use all max slots,
// others together only max-reserve, so the last reserve slots stay free
// for root and admin_groups. Each true is matched by one put.
func (s *connSlots) take(admin bool, reserve int) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	limit := s.max
	if !admin {
		limit -= reserve
	}
	if s.total >= limit {
		return false
	}
	s.total++
	return true
}

func (s *connSlots) put() {
	s.mu.Lock()
	s.total--
	s.mu.Unlock()
}
