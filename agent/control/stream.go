package control

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"time"
)

// Stream is an op's answer that goes on after its answer line (op events):
// a handler returns one as its result, rendered as the answer line like any
// other result; the server then calls Run with the connection's writer
// until Run returns, the client closes its end, or the daemon stops (ctx
// ends), and ends the connection. Close is called once in every case, Run
// or not (the answer line could not be written): it frees what the
// handler took.
//
// While a stream runs, the connection reads no more requests: what the
// client sends is read and discarded, and its end (EOF) ends the stream.
// The idle timeout does not apply; the write timeout does, to every
// line.
type Stream interface {
	Run(ctx context.Context, w *StreamWriter) error
	Close()
}

// StreamWriter writes a stream's lines to the connection, each flush
// under control.write_timeout.
type StreamWriter struct {
	c       net.Conn
	timeout time.Duration
	buf     []byte
	torn    []byte // the rest of a line a timed-out write left half sent
}

// Line buffers one line (it must end in a newline); Flush sends them.
func (w *StreamWriter) Line(b []byte) { w.buf = append(w.buf, b...) }

// Buffered is the number of bytes Line buffered since the last Flush.
func (w *StreamWriter) Buffered() int { return len(w.buf) }

// Flush writes the buffered lines. An error wrapping
// os.ErrDeadlineExceeded means the client did not read them within the
// write timeout: the stream should end (Final may still say why).
func (w *StreamWriter) Flush() error {
	if len(w.buf) == 0 {
		return nil
	}
	if err := w.c.SetWriteDeadline(time.Now().Add(w.timeout)); err != nil {
		return err
	}
	n, err := w.c.Write(w.buf)
	if err != nil && n < len(w.buf) {
		// Keep what completes the line the write cut, so that a final
		// line after it starts on a line of its own.
		rest := w.buf[n:]
		if n > 0 && w.buf[n-1] != '\n' {
			if i := indexNL(rest); i >= 0 {
				w.torn = append(w.torn[:0], rest[:i+1]...)
			}
		}
	}
	w.buf = w.buf[:0]
	return err
}

func indexNL(b []byte) int {
	for i, c := range b {
		if c == '\n' {
			return i
		}
	}
	return -1
}

// finalTimeout bounds Final's write.
const finalTimeout = 100 * time.Millisecond

// Final makes one short attempt (finalTimeout) to write a last line after
// a failed Flush (or before the stream ends): if the client's buffer has
// room again, it reads why the stream ended. The lines still buffered are
// dropped.
func (w *StreamWriter) Final(b []byte) error {
	if err := w.c.SetWriteDeadline(time.Now().Add(finalTimeout)); err != nil {
		return err
	}
	out := append(w.torn, b...)
	w.torn, w.buf = nil, w.buf[:0]
	_, err := w.c.Write(out)
	return err
}

// runStream runs st on c: its end is the connection's end. A goroutine
// reads and discards what the client sends, and cancels the stream at
// its EOF.
func (s *Server) runStream(ctx context.Context, c net.Conn, r *bufio.Reader, st Stream, cfg Config) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	_ = c.SetReadDeadline(time.Time{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer cancel()
		_, _ = io.Copy(io.Discard, r)
	}()
	err := st.Run(ctx, NewStreamWriter(c, cfg.WriteTimeout.D()))
	_ = c.SetReadDeadline(time.Now()) // unblock the reader
	<-done
	if errors.Is(err, context.Canceled) || errors.Is(err, os.ErrClosed) || errors.Is(err, net.ErrClosed) {
		err = nil
	}
	return err
}

// closeStream closes a stream the connection will not run.
func (c *Call) closeStream() {
	if c.stream != nil {
		c.stream.Close()
		c.stream = nil
	}
}

// NewStreamWriter is the writer a stream gets on c (tests of streams).
func NewStreamWriter(c net.Conn, timeout time.Duration) *StreamWriter {
	return &StreamWriter{c: c, timeout: timeout}
}

// Bytes are the lines buffered since the last Flush (tests).
func (w *StreamWriter) Bytes() []byte { return w.buf }
