package evidence

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/user"
	"slices"
	"strconv"
	"syscall"
	"time"

	"github.com/shirou/gopsutil/v4/host"
	"github.com/shirou/gopsutil/v4/load"
	psnet "github.com/shirou/gopsutil/v4/net"
	"github.com/shirou/gopsutil/v4/process"
)

// Collector reads the host's state. It is safe for concurrent use; captures
// run one at a time.
type Collector struct {
	cfg Config
	now func() time.Time
	sem chan struct{}
}

// NewCollector returns a collector; cfg is used with its defaults applied.
// now defaults to time.Now.
func NewCollector(cfg Config, now func() time.Time) *Collector {
	if now == nil {
		now = time.Now
	}
	return &Collector{cfg: cfg.WithDefaults(), now: now, sem: make(chan struct{}, 1)}
}

func (c *Collector) acquire(ctx context.Context) error {
	select {
	case c.sem <- struct{}{}:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("%w: %w", ErrBusy, ctx.Err())
	}
}

func (c *Collector) release() { <-c.sem }

// Capture takes a snapshot of the host. It returns whatever it collected
// when the deadline (ctx, or Config.Timeout, whichever is sooner) passes,
// with Incomplete set; it fails only when it could not start.
func (c *Collector) Capture(ctx context.Context, reason, trigger string) (*Snapshot, error) {
	ctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout.D())
	defer cancel()
	if err := c.acquire(ctx); err != nil {
		return nil, fmt.Errorf("capture evidence: %w", err)
	}
	defer c.release()

	start := c.now()
	s := &Snapshot{
		Reason: reason, Trigger: trigger, Started: start.UTC(),
		Users: []User{}, Processes: []Process{}, Connections: []Connection{},
		Listening: []Connection{}, Blocks: []Block{}, Findings: []Finding{},
	}
	s.Hostname, _ = os.Hostname()
	c.hostFacts(ctx, s)

	procs, perr := c.processes(ctx, s)
	if perr != nil {
		fail(s, "processes", perr)
	}
	if err := c.connections(ctx, s, procs); err != nil {
		fail(s, "connections", err)
	}
	s.Duration = c.now().Sub(start)
	return s, nil
}

// fail notes that part of the snapshot could not be collected.
func fail(s *Snapshot, part string, err error) {
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
		s.Incomplete = true
	}
	s.Errors = append(s.Errors, part+": "+err.Error())
}

func (c *Collector) hostFacts(ctx context.Context, s *Snapshot) {
	if bt, err := host.BootTimeWithContext(ctx); err == nil {
		s.BootTime = time.Unix(int64(bt), 0).UTC()
	} else {
		fail(s, "boot time", err)
	}
	if up, err := host.UptimeWithContext(ctx); err == nil {
		s.UptimeS = up
	} else {
		fail(s, "uptime", err)
	}
	if avg, err := load.AvgWithContext(ctx); err == nil {
		s.Load = Load{Load1: avg.Load1, Load5: avg.Load5, Load15: avg.Load15}
	} else {
		fail(s, "load", err)
	}
	users, err := host.UsersWithContext(ctx)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		fail(s, "users", err)
	}
	for _, u := range users {
		s.Users = append(s.Users, User{User: u.User, Terminal: u.Terminal, Host: u.Host,
			Started: time.Unix(int64(u.Started), 0).UTC()})
	}
}

// processes records up to MaxProcesses processes and returns an index by
// pid for the connections to name their owners.
func (c *Collector) processes(ctx context.Context, s *Snapshot) (map[int32]*Process, error) {
	pids, err := process.PidsWithContext(ctx)
	if err != nil {
		return nil, err
	}
	slices.Sort(pids)
	s.ProcessesTotal = len(pids)
	if len(pids) > c.cfg.MaxProcesses {
		pids = pids[:c.cfg.MaxProcesses]
		s.ProcessesTruncated = true
	}
	names := map[int32]string{}
	for _, pid := range pids {
		if err := ctx.Err(); err != nil {
			s.ProcessesTruncated = true
			return index(s.Processes), err
		}
		if p, ok := c.process(ctx, pid, names); ok {
			s.Processes = append(s.Processes, p)
		}
	}
	return index(s.Processes), nil
}

func index(ps []Process) map[int32]*Process {
	m := make(map[int32]*Process, len(ps))
	for i := range ps {
		m[ps[i].PID] = &ps[i]
	}
	return m
}

// process reads one process; ok is false when it vanished meanwhile.
func (c *Collector) process(ctx context.Context, pid int32, names map[int32]string) (Process, bool) {
	p, err := process.NewProcessWithContext(ctx, pid)
	if err != nil {
		return Process{}, false
	}
	out := Process{PID: pid, UID: -1}
	out.Name, err = p.NameWithContext(ctx)
	if err != nil {
		return Process{}, false // gone
	}
	out.PPID, _ = p.PpidWithContext(ctx)
	out.Exe, _ = p.ExeWithContext(ctx)
	if uids, err := p.UidsWithContext(ctx); err == nil && len(uids) > 0 {
		out.UID = int32(uids[0])
		out.User = userName(out.UID, names)
	}
	if args, err := p.CmdlineSliceWithContext(ctx); err == nil {
		out.Cmdline, out.Truncated = capArgs(args, c.cfg.MaxCmdline)
	}
	if ms, err := p.CreateTimeWithContext(ctx); err == nil {
		out.Started = time.UnixMilli(ms).UTC()
	}
	return out, true
}

func userName(uid int32, cache map[int32]string) string {
	if n, ok := cache[uid]; ok {
		return n
	}
	n := ""
	if u, err := user.LookupId(strconv.Itoa(int(uid))); err == nil {
		n = u.Username
	}
	cache[uid] = n
	return n
}

// capArgs keeps whole arguments up to max bytes in total, cutting the last.
func capArgs(args []string, max int) ([]string, bool) {
	total := 0
	for i, a := range args {
		if total+len(a) > max {
			out := slices.Clone(args[:i])
			if rest := max - total; rest > 0 {
				out = append(out, a[:rest])
			}
			return out, true
		}
		total += len(a)
	}
	return args, false
}

// rawConnections runs the /proc walk off the caller's goroutine so that the
// deadline is honoured even though the walk itself is not cancellable; the
// walk is bounded by the number of open fds and ends on its own.
func rawConnections(ctx context.Context) ([]psnet.ConnectionStat, error) {
	type result struct {
		cs  []psnet.ConnectionStat
		err error
	}
	ch := make(chan result, 1)
	go func() {
		cs, err := psnet.ConnectionsWithoutUidsWithContext(context.WithoutCancel(ctx), "inet")
		ch <- result{cs, err}
	}()
	select {
	case r := <-ch:
		return r.cs, r.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (c *Collector) connections(ctx context.Context, s *Snapshot, procs map[int32]*Process) error {
	raw, err := rawConnections(ctx)
	if err != nil {
		return err
	}
	for _, r := range raw {
		conn, ok := convert(r)
		if !ok {
			continue
		}
		if p := procs[conn.PID]; p != nil {
			conn.Name, conn.Exe = p.Name, p.Exe
		}
		if listening(conn) {
			if len(s.Listening) >= c.cfg.MaxConnections {
				s.ListeningTruncated = true
				continue
			}
			s.Listening = append(s.Listening, conn)
			continue
		}
		s.ConnectionsTotal++
		if len(s.Connections) >= c.cfg.MaxConnections {
			s.ConnTruncated = true
			continue
		}
		s.Connections = append(s.Connections, conn)
	}
	sortConns(s.Listening)
	sortConns(s.Connections)
	return nil
}

func sortConns(cs []Connection) {
	slices.SortFunc(cs, func(a, b Connection) int {
		if c := a.Local.Compare(b.Local); c != 0 {
			return c
		}
		return a.Remote.Compare(b.Remote)
	})
}

func listening(c Connection) bool {
	return c.State == "LISTEN" || (c.Proto[:3] == "udp" && !c.Remote.Addr().IsValid())
}

func convert(r psnet.ConnectionStat) (Connection, bool) {
	proto := ""
	switch {
	case r.Type == syscall.SOCK_STREAM && r.Family == syscall.AF_INET:
		proto = "tcp"
	case r.Type == syscall.SOCK_STREAM && r.Family == syscall.AF_INET6:
		proto = "tcp6"
	case r.Type == syscall.SOCK_DGRAM && r.Family == syscall.AF_INET:
		proto = "udp"
	case r.Type == syscall.SOCK_DGRAM && r.Family == syscall.AF_INET6:
		proto = "udp6"
	default:
		return Connection{}, false
	}
	conn := Connection{Proto: proto, State: r.Status, PID: r.Pid}
	if r.Status == "NONE" {
		conn.State = ""
	}
	conn.Local = addrPort(r.Laddr)
	conn.Remote = addrPort(r.Raddr)
	return conn, true
}

// addrPort parses gopsutil's address; the unspecified remote of a listener
// becomes the zero AddrPort, and IPv4-mapped IPv6 addresses are unmapped so
// a block on 192.0.2.2 matches a dual-stack socket's peer.
func addrPort(a psnet.Addr) netip.AddrPort {
	ip, err := netip.ParseAddr(a.IP)
	if err != nil {
		return netip.AddrPort{}
	}
	ip = ip.Unmap()
	if ip.IsUnspecified() && a.Port == 0 {
		return netip.AddrPort{}
	}
	return netip.AddrPortFrom(ip, uint16(a.Port))
}

// ConnectionsOf returns the current connections of this host whose remote
// address is inside any of the prefixes, with the owning processes. It is
// bounded by ctx and Config.BlockTimeout and by MaxConnections. Call it
// after the block is in place: it never needs to come first.
func (c *Collector) ConnectionsOf(ctx context.Context, prefixes []netip.Prefix) ([]Connection, error) {
	ctx, cancel := context.WithTimeout(ctx, c.cfg.BlockTimeout.D())
	defer cancel()
	if err := c.acquire(ctx); err != nil {
		return nil, fmt.Errorf("connections of blocked addresses: %w", err)
	}
	defer c.release()
	raw, err := rawConnections(ctx)
	if err != nil {
		return nil, fmt.Errorf("connections of blocked addresses: %w", err)
	}
	out := []Connection{}
	names := map[int32]*Process{}
	for _, r := range raw {
		conn, ok := convert(r)
		if !ok || !conn.Remote.Addr().IsValid() || !inAny(conn.Remote.Addr(), prefixes) {
			continue
		}
		if len(out) >= c.cfg.MaxConnections {
			break
		}
		if conn.PID > 0 {
			p, ok := names[conn.PID]
			if !ok {
				if pp, ok := c.process(ctx, conn.PID, map[int32]string{}); ok {
					p = &pp
				}
				names[conn.PID] = p
			}
			if p != nil {
				conn.Name, conn.Exe = p.Name, p.Exe
			}
		}
		out = append(out, conn)
	}
	sortConns(out)
	return out, nil
}

func inAny(a netip.Addr, ps []netip.Prefix) bool {
	for _, p := range ps {
		if p.Contains(a) {
			return true
		}
	}
	return false
}
