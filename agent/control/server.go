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
	var conns sync.Map
	// At the end, requests in flight finish and their answers are written
	// (an uninstall_rules that stops the daemon is answered): reads end at
	// once, then each connection closes when its requests are done.
	defer func() {
		conns.Range(func(k, _ any) bool { _ = k.(net.Conn).SetReadDeadline(time.Now()); return true })
		wg.Wait()
	}()
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	// Fixed while serving (restart to change), and read here, not per
	// connection: the accept loop never waits on anything.
	limits := s.config()
	slots := newConnSlots(limits.MaxConnections)
	refusedLog := &logThrottle{interval: refuseInterval}
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
// The answers are written in request order (connWriter). Requests run one
// after another on the goroutine that reads the connection; when one joins
// the decision path's queue (pipeline.Joined) and so waits for a commit,
// the reading role passes to a new goroutine, which reads and runs the next
// request: decisions reach the path in the order sent, and a request that
// never waits costs no hand-off. A request whose op is not pipelined (a
// read: list, status...) waits until every earlier answer is written, so
// it sees their effects. At most maxInFlight requests, and
// maxInFlightBytes of request lines (or one line, whichever is more), are
// in flight per connection.
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
	written chan struct{} // resp was written (and every earlier one)
}

func newSlot(size int) *slot { return &slot{size: size, written: make(chan struct{})} }

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
// in order. Nothing a client sends can crash it.
func (s *Server) serveConn(ctx context.Context, c net.Conn, peer Peer, cfg Config) {
	cw := &connWriter{s: s, c: c, peer: peer, cfg: cfg, freed: make(chan struct{}, 1),
		w: bufio.NewWriterSize(deadlineWriter{c, cfg.WriteTimeout.D()}, 64<<10)}
	cw.wg.Add(1) // the reading role
	s.readLoop(ctx, &connReader{r: bufio.NewReaderSize(c, cfg.MaxLineBytes), c: c, peer: peer, cfg: cfg, cw: cw})
	cw.wg.Wait()
}

// connReader is the reading role of a connection: one goroutine holds it
// at a time.
type connReader struct {
	r    *bufio.Reader
	c    net.Conn
	peer Peer
	cfg  Config
	cw   *connWriter
	prev *slot // the last request, if still in flight
}

// readLoop reads and runs requests until the connection ends, or until a
// request it runs joins the decision path's queue: then it hands the
// reading role to a new goroutine (the next request may join the same
// group) and finishes that request. A request that never waits on the path
// costs no hand-off. A request whose op is not pipelined waits until every
// earlier answer is written.
func (s *Server) readLoop(ctx context.Context, cr *connReader) {
	defer func() {
		if r := recover(); r != nil {
			s.log.Error("control: panic serving a connection (a bug)", "panic", r)
		}
	}()
	defer cr.cw.wg.Done()
	cfg := cr.cfg
	for ctx.Err() == nil && cr.cw.err() == nil {
		_ = cr.c.SetReadDeadline(time.Now().Add(cfg.IdleTimeout.D()))
		line, err := cr.r.ReadSlice('\n')
		switch {
		case errors.Is(err, bufio.ErrBufferFull):
			sl := newSlot(0)
			cr.cw.add(sl)
			cr.cw.complete(sl, errorLine(nil, api.Errorf(api.CodeLineTooLong, "request line longer than %d bytes (control.max_line_bytes); split it", cfg.MaxLineBytes)))
			cr.prev = sl
			if !discardLine(cr.r) {
				return
			}
			continue
		case err != nil && len(bytes.TrimSpace(line)) == 0:
			return // EOF, idle timeout, or closed
		case len(bytes.TrimSpace(line)) == 0:
			continue // blank line: nothing asked, nothing answered
		}
		last := err != nil                  // the last line had no newline
		line = append([]byte(nil), line...) // the next reader reuses the buffer
		sl := newSlot(len(line))
		cr.cw.add(sl)
		call, derr := decodeRequestInto(new(Call), line)
		if derr != nil {
			cr.cw.complete(sl, errorLine(call.rawID(), derr))
			cr.prev = sl
		} else {
			if cr.prev != nil && !pipelined[call.Op] {
				<-cr.prev.written
			}
			handedOff := false
			joined := func() {
				if last || handedOff {
					return
				}
				handedOff = true
				next := *cr
				next.prev = sl
				cr.cw.wg.Add(1)
				go s.readLoop(ctx, &next)
			}
			resp := s.handleCall(pipeline.WithJoined(ctx, joined), cr.peer, call)
			cr.cw.complete(sl, resp)
			if handedOff {
				return // the new reader goes on
			}
			if st := call.stream; st != nil { // the op answers with a stream: it takes the connection
				// Not pipelined: every earlier answer, and its own, is written.
				call.stream = nil
				if cr.cw.err() == nil {
					if werr := s.runStream(ctx, cr.c, cr.r, st, cfg); werr != nil {
						s.logWriteErr(werr, cr.peer, cfg)
					}
				}
				st.Close()
				return
			}
			cr.prev = sl
		}
		if last {
			return
		}
	}
}

func (s *Server) logWriteErr(err error, peer Peer, cfg Config) {
	if errors.Is(err, os.ErrDeadlineExceeded) {
		s.log.Warn("control: peer does not read its answers; closing the connection",
			"peer", peer.String(), "write_timeout", cfg.WriteTimeout.D())
	}
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
	c := new(Call)
	defer c.closeStream() // a stream's answer line only
	return s.handleLineInto(ctx, peer, line, c)
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
		if st, ok := result.(Stream); ok {
			st.Close()
		}
		return errorLine(call.rawID(), err)
	}
	if st, ok := result.(Stream); ok {
		call.stream = st // serveConn runs it after the answer line
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
