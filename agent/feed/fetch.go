package feed

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"hash"
	"io"
	"net/http"
	"os"
	"syscall"
	"time"
)

// Sentinels callers branch on (errors.Is).
var (
	ErrTooLarge   = errors.New("feed larger than max_size")
	ErrTimeout    = errors.New("feed fetch timed out")
	ErrRedirect   = errors.New("feed redirect refused")
	ErrNotRegular = errors.New("feed path is not a regular file")
	ErrEmpty      = errors.New("feed came back empty")
	ErrBusy       = errors.New("feed refresh already running")
	ErrConflict   = errors.New("feed state changed since this update was fetched")
)

// StatusError is an HTTP answer other than 200 or 304.
type StatusError struct {
	Code int
}

func (e *StatusError) Error() string {
	return fmt.Sprintf("http status %d %s", e.Code, http.StatusText(e.Code))
}

// fetched is what one fetch brought back.
type fetched struct {
	notModified   bool
	set           *Set
	report        Report
	etag, lastMod string
	modTime       time.Time
	size          int64
	sum           [32]byte
}

// newClient builds the HTTP client of a feed: TLS verified (roots from
// the system unless given; there is no knob to skip verification), at
// most MaxRedirects redirects, only to http or https and never from https
// down to http, no idle connections kept between refreshes.
func newClient(roots *x509.CertPool) *http.Client {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: roots}
	tr.DisableKeepAlives = true
	tr.MaxResponseHeaderBytes = 64 << 10
	return &http.Client{
		Transport: tr,
		CheckRedirect: func(req *http.Request, via []*http.Request) error {
			if len(via) > MaxRedirects {
				return fmt.Errorf("%w: more than %d redirects", ErrRedirect, MaxRedirects)
			}
			switch req.URL.Scheme {
			case "https":
			case "http":
				if via[0].URL.Scheme == "https" {
					return fmt.Errorf("%w: from https down to http", ErrRedirect)
				}
			default:
				return fmt.Errorf("%w: to scheme %q", ErrRedirect, req.URL.Scheme)
			}
			return nil
		},
	}
}

// capped reads at most n bytes from r and fails with ErrTooLarge if r
// holds more, so an oversized body is never read whole.
type capped struct {
	r io.Reader
	n int64 // bytes still allowed
	h hash.Hash
}

func (c *capped) Read(p []byte) (int, error) {
	if c.n < 0 {
		return 0, ErrTooLarge
	}
	if int64(len(p)) > c.n+1 {
		p = p[:c.n+1]
	}
	n, err := c.r.Read(p)
	c.n -= int64(n)
	if c.n < 0 {
		return 0, ErrTooLarge
	}
	c.h.Write(p[:n])
	return n, err
}

func (f *Feed) limits() Limits {
	return Limits{MinPrefixV4: f.cfg.MinPrefixV4, MinPrefixV6: f.cfg.MinPrefixV6, MaxEntries: f.cfg.MaxEntries}
}

func (f *Feed) parse(r io.Reader) (fetched, error) {
	c := &capped{r: r, n: int64(f.cfg.MaxSize), h: sha256.New()}
	set, rep, err := Parse(c, f.limits())
	out := fetched{set: set, report: rep}
	if err != nil {
		return out, err
	}
	c.h.Sum(out.sum[:0])
	return out, nil
}

func (f *Feed) fetchHTTP(ctx context.Context, last *State) (fetched, error) {
	ctx, cancel := context.WithTimeout(ctx, f.cfg.Timeout.D())
	defer cancel()
	out, err := f.doHTTP(ctx, last)
	if err != nil && errors.Is(ctx.Err(), context.DeadlineExceeded) && !errors.Is(err, ErrTooLarge) {
		err = fmt.Errorf("%w after %s: %w", ErrTimeout, f.cfg.Timeout.D(), err)
	}
	return out, err
}

func (f *Feed) doHTTP(ctx context.Context, last *State) (fetched, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, f.cfg.URL, nil)
	if err != nil {
		return fetched{}, fmt.Errorf("request: %w", err)
	}
	req.Header.Set("User-Agent", "parry-feed/1")
	conditional := last != nil && last.Source == f.cfg.URL && (last.ETag != "" || last.LastModified != "")
	if conditional {
		if last.ETag != "" {
			req.Header.Set("If-None-Match", last.ETag)
		}
		if last.LastModified != "" {
			req.Header.Set("If-Modified-Since", last.LastModified)
		}
	}
	resp, err := f.client.Do(req)
	if err != nil {
		return fetched{}, fmt.Errorf("get: %w", err)
	}
	defer resp.Body.Close()
	switch {
	case resp.StatusCode == http.StatusNotModified && conditional:
		return fetched{notModified: true, etag: last.ETag, lastMod: last.LastModified}, nil
	case resp.StatusCode != http.StatusOK:
		return fetched{}, &StatusError{Code: resp.StatusCode}
	case resp.ContentLength > int64(f.cfg.MaxSize):
		return fetched{}, fmt.Errorf("%w: Content-Length %d over %s", ErrTooLarge, resp.ContentLength, f.cfg.MaxSize)
	}
	out, err := f.parse(resp.Body)
	if err != nil {
		return out, err
	}
	out.etag = bounded(resp.Header.Get("ETag"))
	out.lastMod = bounded(resp.Header.Get("Last-Modified"))
	return out, nil
}

// bounded keeps a validator only if it is short and printable: it is sent
// back to the server and stored.
func bounded(s string) string {
	if len(s) > 256 {
		return ""
	}
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] > 0x7e {
			return ""
		}
	}
	return s
}

func (f *Feed) fetchFile(last *State) (fetched, error) {
	// O_NONBLOCK: opening a FIFO must not wait for a writer; it is
	// refused below as not regular. Regular files ignore the flag.
	fd, err := os.OpenFile(f.cfg.Path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return fetched{}, fmt.Errorf("open: %w", err)
	}
	defer fd.Close()
	fi, err := fd.Stat()
	if err != nil {
		return fetched{}, fmt.Errorf("stat: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return fetched{}, fmt.Errorf("%w: %s", ErrNotRegular, fi.Mode().Type())
	}
	if fi.Size() > int64(f.cfg.MaxSize) {
		return fetched{}, fmt.Errorf("%w: %d bytes over %s", ErrTooLarge, fi.Size(), f.cfg.MaxSize)
	}
	same := last != nil && last.Source == f.cfg.Path
	if same && last.Size == fi.Size() && last.ModTime.Equal(fi.ModTime()) {
		return fetched{notModified: true, modTime: last.ModTime, size: last.Size, sum: last.Sum}, nil
	}
	out, err := f.parse(fd)
	if err != nil {
		return out, err
	}
	out.modTime, out.size = fi.ModTime(), fi.Size()
	if same && out.sum == last.Sum {
		// Touched or rewritten with the same bytes: as a 304.
		out.notModified, out.set = true, nil
	}
	return out, nil
}
