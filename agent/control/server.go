package control

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/parryhq/parry/agent/api"
	"github.com/parryhq/parry/agent/pipeline"
)

// Listen creates the control socket at path (mode and group from the
// config), replacing a stale socket file.
func Listen(path string, cfg Config) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("control socket: %w", err)
	}
	if c, err := net.DialTimeout("unix", path, 200*time.Millisecond); err == nil {
		c.Close()
		return nil, fmt.Errorf("control socket %s: another parryd is listening", path)
	}
	if st, err := os.Lstat(path); err == nil && st.Mode()&os.ModeSocket == 0 {
		return nil, fmt.Errorf("control socket %s: exists and is not a socket; refusing to replace it", path)
	}
	_ = os.Remove(path)
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("control socket: %w", err)
	}
	mode, _ := ParseMode(cfg.SocketMode)
	if err := os.Chmod(path, mode); err != nil {
		ln.Close()
		return nil, fmt.Errorf("control socket: %w", err)
	}
	if g, err := user.LookupGroup(cfg.SocketGroup); err == nil {
		gid, _ := strconv.Atoi(g.Gid)
		if err := os.Chown(path, 0, gid); err != nil {
			ln.Close()
			return nil, fmt.Errorf("control socket: %w", err)
		}
	}
	return ln, nil
}

// Serve accepts control connections on ln until ctx ends.
//
// Admission, so that no local user can keep root out (docs/protocol.md,
// Limits): a uid other than root may hold control.max_connections_per_uid
// connections, counted from SO_PEERCRED at accept before anything slow;
// once the peer is resolved (user database, admin groups), it takes one
// of control.max_connections slots, of which the last control.admin_reserve
// are for root and admin_groups only. Every answer is written under
// control.write_timeout: a peer that does not read is disconnected.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	var wg sync.WaitGroup
	defer wg.Wait()
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	// Fixed while serving (restart to change), and read here, not per
	// connection: the accept loop never waits on anything.
	limits := s.config()
	slots := newConnSlots(limits.MaxConnections)
	refusedLog := &logThrottle{interval: refuseInterval}
	var conns sync.Map
	defer conns.Range(func(k, _ any) bool { k.(net.Conn).Close(); return true })
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return fmt.Errorf("control socket accept: %w", err)
		}
		cred, err := peerCred(c)
		if err != nil {
			s.log.Warn("control: no peer credentials; closing", "err", err)
			c.Close()
			continue
		}
		if !slots.enterUID(cred.UID, limits.MaxConnectionsPerUID) {
			s.refuseConn(c, refusedLog, "uid", cred.UID, api.Errorf(api.CodeTooManyConns,
				"uid %d already has %d connections (control.max_connections_per_uid); close some and try again", cred.UID, limits.MaxConnectionsPerUID))
			continue
		}
		conns.Store(c, nil)
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer slots.leaveUID(cred.UID)
			defer conns.Delete(c)
			defer c.Close()
			cfg := s.config()
			peer := ResolvePeer(cred, cfg.AdminGroups)
			if !slots.take(peer.Admin, limits.AdminReserve) {
				msg := "too many connections; try again"
				if !peer.Admin && limits.AdminReserve > 0 {
					msg = fmt.Sprintf("too many connections (the last %d of control.max_connections are kept for root and control.admin_groups); try again", limits.AdminReserve)
				}
				s.refuseConn(c, refusedLog, "peer", peer.String(), api.Errorf(api.CodeTooManyConns, "%s", msg))
				return
			}
			defer slots.put()
			s.serveConn(ctx, c, peer, cfg)
		}()
	}
}

// refuseConn answers a connection it will not serve with one error line
// and closes it. The line goes into the empty buffer of a new socket, so
// the write never waits; its short deadline only makes sure of that (the
// accept loop calls this). The log line is throttled: a peer reconnecting
// in a loop must not flood the journal either.
func (s *Server) refuseConn(c net.Conn, lt *logThrottle, key string, who any, e *api.Error) {
	if n, ok := lt.allow(time.Now()); ok {
		s.log.Warn("control: too many connections; refusing", key, who, "reason", e.Message, "refused_since_last_line", n)
	}
	_, _ = deadlineWriter{c, 100 * time.Millisecond}.Write(errorLine(nil, e))
	c.Close()
}

// logThrottle lets the first event be logged at once, then at most one
// line per interval, with the number of events since the last line.
type logThrottle struct {
	interval time.Duration

	mu   sync.Mutex
	last time.Time
	n    int
}

func (l *logThrottle) allow(now time.Time) (n int, ok bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.n++
	if !l.last.IsZero() && now.Sub(l.last) < l.interval {
		return 0, false
	}
	n, l.n, l.last = l.n, 0, now
	return n, true
}

// deadlineWriter gives every write to the connection its own deadline, so
// a peer that stops reading its answers cannot hold the connection (and
// its slot) for longer than the timeout.
type deadlineWriter struct {
	c       net.Conn
	timeout time.Duration
}

func (w deadlineWriter) Write(p []byte) (int, error) {
	if err := w.c.SetWriteDeadline(time.Now().Add(w.timeout)); err != nil {
		return 0, err
	}
	return w.c.Write(p)
}

// Pipelining: a connection's requests are in flight together, so that a
// client that sends many without waiting (parry block --file, a log
// shipper) has them join the same group commit (agent/enforce, group.go).
// The answers are written in request order. Request n+1 starts only once
// request n has joined the decision path's queue (pipeline.Joined) or
// finished, so decisions reach the path in the order sent; a request whose
// op is not one of pipelined (a read: list, status...) waits until every
// earlier answer is written, so it sees their effects. At most
// maxInFlight requests, and maxInFlightBytes of request lines (or one line,
// whichever is more), are in flight per connection.
const (
	maxInFlight      = 64
	maxInFlightBytes = 4 << 20
)

// pipelined are the ops that may run while the connection's earlier
// requests are still in flight: their decisions keep their order through
// pipeline.Joined.
var pipelined = map[string]bool{"block": true, "unblock": true, "signal": true}

// slot is one request in flight on a connection.
type slot struct {
	size    int
	resp    []byte
	done    bool          // resp is set (under connWriter.mu)
	join    func()        // closes joined, once
	joined  chan struct{} // the request joined the path's queue, or finished
	written chan struct{} // resp was written (and every earlier one)
}

func newSlot(size int) *slot {
	sl := &slot{size: size, joined: make(chan struct{}), written: make(chan struct{})}
	sl.join = sync.OnceFunc(func() { close(sl.joined) })
	return sl
}

// connWriter writes a connection's answers in request order: whoever
// completes the request at the head writes it and every completed one
// behind it, then flushes if the next is not ready.
type connWriter struct {
	s    *Server
	c    net.Conn
	peer Peer
	cfg  Config

	mu       sync.Mutex
	w        *bufio.Writer
	werr     error
	queue    []*slot // in flight, in request order
	inFlight int     // bytes of request lines in flight
	freed    chan struct{}
	wg       sync.WaitGroup
}

// add queues sl behind the requests in flight; it waits while the
// connection's in-flight bound is reached.
func (cw *connWriter) add(sl *slot) {
	cw.mu.Lock()
	for len(cw.queue) > 0 && (len(cw.queue) >= maxInFlight || cw.inFlight+sl.size > maxInFlightBytes) {
		cw.mu.Unlock()
		<-cw.freed
		cw.mu.Lock()
	}
	cw.queue = append(cw.queue, sl)
	cw.inFlight += sl.size
	cw.wg.Add(1)
	cw.mu.Unlock()
}

// idle reports whether no request is in flight.
func (cw *connWriter) idle() bool {
	cw.mu.Lock()
	defer cw.mu.Unlock()
	return len(cw.queue) == 0
}

// complete sets sl's answer and writes what is ready.
func (cw *connWriter) complete(sl *slot, resp []byte) {
	cw.mu.Lock()
	defer cw.mu.Unlock()
	sl.resp, sl.done = resp, true
	wrote := false
	for len(cw.queue) > 0 && cw.queue[0].done {
		h := cw.queue[0]
		cw.queue = cw.queue[1:]
		if cw.werr == nil {
			_, cw.werr = cw.w.Write(h.resp)
			wrote = true
		}
		cw.inFlight -= h.size
		close(h.written)
		cw.wg.Done()
	}
	if wrote && cw.werr == nil {
		cw.werr = cw.w.Flush()
	}
	if wrote && cw.werr != nil {
		cw.s.logWriteErr(cw.werr, cw.peer, cw.cfg)
		cw.c.Close() // the reader stops at its next read
	}
	select {
	case cw.freed <- struct{}{}:
	default:
	}
}

// err is the first write error.
func (cw *connWriter) err() error {
	cw.mu.Lock()
	defer cw.mu.Unlock()
	return cw.werr
}

// serveConn reads one request per line and writes one response per line,
// in order. A request that arrives with nothing in flight and nothing more
// to read runs on the reading goroutine (a client waiting for each answer
// pays for no hand-off); others run on their own goroutine, in order
// (runSlot). Nothing a client sends can crash it.
func (s *Server) serveConn(ctx context.Context, c net.Conn, peer Peer, cfg Config) {
	defer func() {
		if r := recover(); r != nil {
			s.log.Error("control: panic serving a connection (a bug)", "panic", r)
		}
	}()
	r := bufio.NewReaderSize(c, cfg.MaxLineBytes)
	cw := &connWriter{s: s, c: c, peer: peer, cfg: cfg, freed: make(chan struct{}, 1),
		w: bufio.NewWriterSize(deadlineWriter{c, cfg.WriteTimeout.D()}, 64<<10)}
	defer cw.wg.Wait()
	var prev *slot // the last request queued, if still in flight
	var call Call  // reused by the requests run inline
	for ctx.Err() == nil && cw.err() == nil {
		_ = c.SetReadDeadline(time.Now().Add(cfg.IdleTimeout.D()))
		line, err := r.ReadSlice('\n')
		switch {
		case errors.Is(err, bufio.ErrBufferFull):
			sl := newSlot(0)
			cw.add(sl)
			cw.complete(sl, errorLine(nil, api.Errorf(api.CodeLineTooLong, "request line longer than %d bytes (control.max_line_bytes); split it", cfg.MaxLineBytes)))
			sl.join()
			prev = sl
			if !discardLine(r) {
				return
			}
			continue
		case err != nil && len(bytes.TrimSpace(line)) == 0:
			return // EOF, idle timeout, or closed
		case len(bytes.TrimSpace(line)) == 0:
			continue // blank line: nothing asked, nothing answered
		}
		if r.Buffered() == 0 && cw.idle() {
			sl := newSlot(0)
			cw.add(sl)
			cw.complete(sl, s.handleLineInto(ctx, peer, line, &call))
			prev = nil
		} else {
			sl := newSlot(len(line))
			cw.add(sl)
			go s.runSlot(ctx, peer, append([]byte(nil), line...), cw, sl, prev)
			prev = sl
		}
		if err != nil {
			return // the last line had no newline
		}
	}
}

func (s *Server) logWriteErr(err error, peer Peer, cfg Config) {
	if errors.Is(err, os.ErrDeadlineExceeded) {
		s.log.Warn("control: peer does not read its answers; closing the connection",
			"peer", peer.String(), "write_timeout", cfg.WriteTimeout.D())
	}
}

// runSlot runs one pipelined request once its turn has come.
func (s *Server) runSlot(ctx context.Context, peer Peer, line []byte, cw *connWriter, sl, prev *slot) {
	var resp []byte
	defer func() {
		if r := recover(); r != nil {
			s.log.Error("control: panic serving a request (a bug)", "panic", r)
			resp = errorLine(nil, api.Errorf(api.CodeInternal, "internal error; see the daemon's log"))
		}
		sl.join()
		cw.complete(sl, resp)
	}()
	if prev != nil {
		<-prev.joined
	}
	call, err := decodeRequestInto(new(Call), line)
	if err != nil {
		resp = errorLine(call.rawID(), err)
		return
	}
	if prev != nil && !pipelined[call.Op] {
		<-prev.written
	}
	resp = s.handleCall(pipeline.WithJoined(ctx, sl.join), peer, call)
}

// discardLine skips the rest of an oversized line; false if the
// connection ended first.
func discardLine(r *bufio.Reader) bool {
	for {
		_, err := r.ReadSlice('\n')
		if err == nil {
			return true
		}
		if !errors.Is(err, bufio.ErrBufferFull) {
			return false
		}
	}
}

// HandleLine decodes and runs one request line from peer and returns the
// answer line (tests and fuzzing drive the server through it).
func (s *Server) HandleLine(ctx context.Context, peer Peer, line []byte) []byte {
	return s.handleLineInto(ctx, peer, line, new(Call))
}

// handleLineInto is handleLine decoding into buf, which no op keeps.
func (s *Server) handleLineInto(ctx context.Context, peer Peer, line []byte, buf *Call) (resp []byte) {
	call, err := decodeRequestInto(buf, line)
	if err != nil {
		return errorLine(call.rawID(), err)
	}
	return s.handleCall(ctx, peer, call)
}

// handleCall runs one decoded request from peer and returns the answer line.
func (s *Server) handleCall(ctx context.Context, peer Peer, call *Call) (resp []byte) {
	call.Peer = peer
	if ctx.Err() != nil {
		return errorLine(call.rawID(), api.Errorf(api.CodeShuttingDown, "parryd is stopping; retry when it is back"))
	}
	op, ok := s.ops[call.Op]
	if !ok {
		return errorLine(call.rawID(), api.Errorf(api.CodeUnknownOp, "unknown op %q; see docs/protocol.md", call.Op))
	}
	if !s.limiter.allow(peer.UID) { // before anything that costs, the audit line of a refusal included
		return errorLine(call.rawID(), api.Errorf(api.CodeRateLimited, "too many requests from uid %d; slow down", peer.UID))
	}
	if !op.perm(peer) {
		s.refusals.note(peer.UID, call.Op, map[string]any{"op": call.Op, "code": api.CodeForbidden, "sender": peer.String()})
		return errorLine(call.rawID(), api.Errorf(api.CodeForbidden, "%s may not use op %q: run as root or as a member of control.admin_groups", peer.User, call.Op))
	}
	if !op.params && len(call.params) > 0 { // before the op runs: an ignored field could mean "not this" (dry_run, confirm)
		return errorLine(call.rawID(), api.Errorf(api.CodeBadRequest, "op %s takes no parameters: unknown field %q", call.Op, truncate(string(call.params[0].key), 64)))
	}
	defer func() {
		if r := recover(); r != nil {
			s.log.Error("control: panic in op (a bug)", "op", call.Op, "panic", r)
			resp = errorLine(call.rawID(), api.Errorf(api.CodeInternal, "internal error in op %q; see the daemon's log", call.Op))
		}
	}()
	result, err := op.fn(ctx, call)
	if err != nil {
		return errorLine(call.rawID(), err)
	}
	return OKLine(call.rawID(), result)
}

// FieldsAppender is a result that can render its own JSON fields (with a
// leading comma), byte for byte as encoding/json would, without
// reflection; false: it cannot this time, use encoding/json.
type FieldsAppender interface {
	AppendFields(b []byte) ([]byte, bool)
}

// OKLine renders {"ok":true,"id":...,<result fields>}.
func OKLine(id json.RawMessage, result any) []byte {
	buf := bytes.NewBuffer(make([]byte, 0, 256))
	buf.WriteString(`{"ok":true`)
	if len(id) > 0 {
		buf.WriteString(`,"id":`)
		buf.Write(id)
	}
	if f, ok := result.(FieldsAppender); ok {
		if b, ok := f.AppendFields(buf.AvailableBuffer()); ok {
			buf.Write(b)
			buf.WriteString("}\n")
			return buf.Bytes()
		}
	}
	if result != nil {
		b, err := json.Marshal(result)
		if err != nil {
			return errorLine(id, api.Errorf(api.CodeInternal, "encode result: %v", err))
		}
		if len(b) > 2 && b[0] == '{' {
			buf.WriteByte(',')
			buf.Write(b[1:])
			buf.WriteByte('\n')
			return buf.Bytes()
		}
		buf.WriteString(`,"result":`)
		buf.Write(b)
	}
	buf.WriteString("}\n")
	return buf.Bytes()
}

// errorLine renders {"ok":false,"id":...,"error":{"code":...,"message":...}}.
func errorLine(id json.RawMessage, err error) []byte {
	var e *api.Error
	if !errors.As(err, &e) {
		e = &api.Error{Code: api.CodeInternal, Message: err.Error()}
	}
	resp := struct {
		OK    bool            `json:"ok"`
		ID    json.RawMessage `json:"id,omitempty"`
		Error *api.Error      `json:"error"`
	}{false, id, e}
	b, _ := json.Marshal(resp)
	return append(b, '\n')
}
