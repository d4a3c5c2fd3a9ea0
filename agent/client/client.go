// Package client speaks parryd's control protocol (docs/protocol.md): one
// JSON request per line, one JSON response per line, in order. The answers
// it decodes are agent/api's types; it imports nothing else of parry.
package client

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"time"

	"github.com/parryhq/parry/agent/api"
	"golang.org/x/sys/unix"
)

// DefaultSocket is where parryd listens by default.
const DefaultSocket = "/run/parry/parry.sock"

// Sentinel errors.
var (
	ErrNotRunning = errors.New("parryd is not running: start it with `systemctl start parry` or run `parryd`")
)

// Response is the common part of every response; Raw is the whole line.
type Response struct {
	OK    bool       `json:"ok"`
	Error *api.Error `json:"error"`
	Raw   []byte     `json:"-"`
}

// Client is one connection to parryd.
type Client struct {
	conn net.Conn
	r    *bufio.Reader
	w    *bufio.Writer
}

// Dial connects to the socket at path. A missing socket or a refused
// connection is ErrNotRunning.
func Dial(path string) (*Client, error) {
	c, err := net.DialTimeout("unix", path, 5*time.Second)
	if err != nil {
		if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ECONNREFUSED) || errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("%w (no one listening on %s)", ErrNotRunning, path)
		}
		if errors.Is(err, unix.EACCES) {
			return nil, fmt.Errorf("connect %s: permission denied: run as root or as a member of the socket's group (parry)", path)
		}
		return nil, fmt.Errorf("connect %s: %w", path, err)
	}
	return &Client{conn: c, r: bufio.NewReaderSize(c, 1<<20), w: bufio.NewWriterSize(c, 256<<10)}, nil
}

// Close closes the connection.
func (c *Client) Close() error { return c.conn.Close() }

// Call sends one request and decodes the response into out (if non-nil).
// An ok:false response is returned as *api.Error.
func (c *Client) Call(req any, out any) error {
	b, err := json.Marshal(req)
	if err != nil {
		return fmt.Errorf("encode request: %w", err)
	}
	var resp Response
	err = c.Pipeline([][]byte{b}, func(_ int, r Response) error {
		resp = r
		return nil
	})
	if err != nil {
		return err
	}
	if !resp.OK {
		return resp.Error
	}
	if out != nil {
		if err := json.Unmarshal(resp.Raw, out); err != nil {
			return fmt.Errorf("decode response: %w", err)
		}
	}
	return nil
}

// Pipeline sends all request lines (without newlines) while reading the
// responses in order, calling each for every one.
func (c *Client) Pipeline(reqs [][]byte, each func(i int, r Response) error) error {
	werr := make(chan error, 1)
	go func() {
		for _, b := range reqs {
			if _, err := c.w.Write(b); err != nil {
				werr <- err
				return
			}
			if err := c.w.WriteByte('\n'); err != nil {
				werr <- err
				return
			}
		}
		werr <- c.w.Flush()
	}()
	for i := range reqs {
		line, err := c.r.ReadBytes('\n')
		if err != nil {
			if we := <-werr; we != nil {
				return fmt.Errorf("send request: %w", we)
			}
			return fmt.Errorf("read response: %w (parryd closed the connection; see its log)", err)
		}
		var r Response
		if err := json.Unmarshal(line, &r); err != nil {
			return fmt.Errorf("decode response: %w", err)
		}
		if !r.OK && r.Error == nil {
			r.Error = &api.Error{Code: api.CodeInternal, Message: "error response without an error"}
		}
		r.Raw = line
		if err := each(i, r); err != nil {
			return err
		}
	}
	return <-werr
}

// Stream sends one request whose answer goes on (op events): answer gets
// the answer line (an ok:false one is returned as *api.Error), then each
// gets every line after it, newline included, until the daemon ends the
// stream (nil), each returns an error (that error), or the connection
// fails. Close the client from another goroutine to stop it.
func (c *Client) Stream(req any, answer func(Response) error, each func(line []byte) error) error {
	b, err := json.Marshal(req)
	if err != nil {
		return fmt.Errorf("encode request: %w", err)
	}
	first := true
	var resp Response
	err = c.Pipeline([][]byte{b}, func(_ int, r Response) error {
		resp, first = r, false
		return nil
	})
	if err != nil {
		return err
	}
	if first || !resp.OK {
		return resp.Error
	}
	if err := answer(resp); err != nil {
		return err
	}
	for {
		line, err := c.r.ReadBytes('\n')
		if len(line) > 0 && line[len(line)-1] == '\n' {
			if err := each(line); err != nil {
				return err
			}
		}
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("read stream: %w", err)
		}
	}
}
