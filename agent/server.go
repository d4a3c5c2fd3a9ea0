package agent

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
)

// Listen creates the control socket at path (mode and group from the
// config), replacing a stale socket file.
func Listen(cfg Config) (net.Listener, error) {
	path := cfg.Socket
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
	mode, _ := parseMode(cfg.Control.SocketMode)
	if err := os.Chmod(path, mode); err != nil {
		ln.Close()
		return nil, fmt.Errorf("control socket: %w", err)
	}
	if g, err := user.LookupGroup(cfg.Control.SocketGroup); err == nil {
		gid, _ := strconv.Atoi(g.Gid)
		if err := os.Chown(path, 0, gid); err != nil {
			ln.Close()
			return nil, fmt.Errorf("control socket: %w", err)
		}
	}
	return ln, nil
}

// Serve accepts control connections on ln until ctx ends.
func (d *Daemon) Serve(ctx context.Context, ln net.Listener) error {
	var wg sync.WaitGroup
	defer wg.Wait()
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	sem := make(chan struct{}, d.Config().Control.MaxConnections)
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
		select {
		case sem <- struct{}{}:
		default:
			d.log.Warn("control: too many connections; refusing one")
			_ = c.SetWriteDeadline(time.Now().Add(time.Second))
			_, _ = c.Write(errorLine(nil, &Error{Code: CodeTooManyConns, Message: "too many connections; try again"}))
			c.Close()
			continue
		}
		conns.Store(c, nil)
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			defer conns.Delete(c)
			defer c.Close()
			d.serveConn(ctx, c)
		}()
	}
}

// serveConn reads one request per line and writes one response per line,
// in order. Nothing a client sends can crash it.
func (d *Daemon) serveConn(ctx context.Context, c net.Conn) {
	defer func() {
		if r := recover(); r != nil {
			d.log.Error("control: panic serving a connection (a bug)", "panic", r)
		}
	}()
	cfg := d.Config().Control
	peer, err := peerCred(c)
	if err != nil {
		d.log.Warn("control: no peer credentials; closing", "err", err)
		return
	}
	peer = resolvePeer(peer, cfg.AdminGroups)
	r := bufio.NewReaderSize(c, cfg.MaxLineBytes)
	w := bufio.NewWriterSize(c, 64<<10)
	defer w.Flush()
	var call Call // reused by every request of the connection
	for ctx.Err() == nil {
		_ = c.SetReadDeadline(time.Now().Add(cfg.IdleTimeout.D()))
		line, err := r.ReadSlice('\n')
		var resp []byte
		switch {
		case errors.Is(err, bufio.ErrBufferFull):
			resp = errorLine(nil, errorf(CodeLineTooLong, "request line longer than %d bytes (control.max_line_bytes); split it", cfg.MaxLineBytes))
			if !discardLine(r) {
				_, _ = w.Write(resp)
				return
			}
		case err != nil && len(bytes.TrimSpace(line)) == 0:
			return // EOF, idle timeout, or closed
		default:
			if len(bytes.TrimSpace(line)) == 0 {
				continue // blank line: nothing asked, nothing answered
			}
			resp = d.handleLineInto(ctx, peer, line, &call)
		}
		if _, werr := w.Write(resp); werr != nil {
			return
		}
		if r.Buffered() == 0 { // batch responses to pipelined requests
			if w.Flush() != nil {
				return
			}
		}
		if err != nil && !errors.Is(err, bufio.ErrBufferFull) {
			return // the last line had no newline
		}
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

// handleLine decodes and runs one request.
func (d *Daemon) handleLine(ctx context.Context, peer Peer, line []byte) []byte {
	return d.handleLineInto(ctx, peer, line, new(Call))
}

// handleLineInto is handleLine decoding into buf, which no op keeps.
func (d *Daemon) handleLineInto(ctx context.Context, peer Peer, line []byte, buf *Call) (resp []byte) {
	call, err := decodeRequestInto(buf, line)
	if err != nil {
		return errorLine(call.rawID(), err)
	}
	call.Peer = peer
	if ctx.Err() != nil {
		return errorLine(call.rawID(), errorf(CodeShuttingDown, "parryd is stopping; retry when it is back"))
	}
	op, ok := d.ops[call.Op]
	if !ok {
		return errorLine(call.rawID(), errorf(CodeUnknownOp, "unknown op %q; see docs/protocol.md", call.Op))
	}
	if !d.limiter.allow(peer.UID) { // before anything that costs, the audit line of a refusal included
		return errorLine(call.rawID(), errorf(CodeRateLimited, "too many requests from uid %d; slow down", peer.UID))
	}
	if !op.perm(d, peer) {
		d.Audit("refuse", map[string]any{"op": call.Op, "code": CodeForbidden, "sender": peer.String()})
		return errorLine(call.rawID(), errorf(CodeForbidden, "%s may not use op %q: run as root or as a member of control.admin_groups", peer.User, call.Op))
	}
	if !op.params && len(call.params) > 0 { // before the op runs: an ignored field could mean "not this" (dry_run, confirm)
		return errorLine(call.rawID(), errorf(CodeBadRequest, "op %s takes no parameters: unknown field %q", call.Op, truncate(string(call.params[0].key), 64)))
	}
	defer func() {
		if r := recover(); r != nil {
			d.log.Error("control: panic in op (a bug)", "op", call.Op, "panic", r)
			resp = errorLine(call.rawID(), errorf(CodeInternal, "internal error in op %q; see the daemon's log", call.Op))
		}
	}()
	result, err := op.fn(ctx, call)
	if err != nil {
		return errorLine(call.rawID(), err)
	}
	return okLine(call.rawID(), result)
}

// fieldsAppender is a result that can render its own JSON fields (with a
// leading comma), byte for byte as encoding/json would, without
// reflection; false: it cannot this time, use encoding/json.
type fieldsAppender interface {
	appendFields(b []byte) ([]byte, bool)
}

// okLine renders {"ok":true,"id":...,<result fields>}.
func okLine(id json.RawMessage, result any) []byte {
	buf := bytes.NewBuffer(make([]byte, 0, 256))
	buf.WriteString(`{"ok":true`)
	if len(id) > 0 {
		buf.WriteString(`,"id":`)
		buf.Write(id)
	}
	if f, ok := result.(fieldsAppender); ok {
		if b, ok := f.appendFields(buf.AvailableBuffer()); ok {
			buf.Write(b)
			buf.WriteString("}\n")
			return buf.Bytes()
		}
	}
	if result != nil {
		b, err := json.Marshal(result)
		if err != nil {
			return errorLine(id, errorf(CodeInternal, "encode result: %v", err))
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
	var e *Error
	if !errors.As(err, &e) {
		e = &Error{Code: CodeInternal, Message: err.Error()}
	}
	resp := struct {
		OK    bool            `json:"ok"`
		ID    json.RawMessage `json:"id,omitempty"`
		Error *Error          `json:"error"`
	}{false, id, e}
	b, _ := json.Marshal(resp)
	return append(b, '\n')
}
