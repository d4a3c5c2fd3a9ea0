package feed

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/parryhq/parry/agent/api"
)

// feedServer serves a body that the test changes, with an ETag, and
// answers If-None-Match with 304.
type feedServer struct {
	mu    sync.Mutex
	body  string
	etag  string
	gets  int
	conds int // requests that carried If-None-Match
	code  int // non-zero: answer with this status
}

func (s *feedServer) set(body string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.body = body
	s.etag = fmt.Sprintf(`"%x"`, sha256.Sum256([]byte(body)))
}

func (s *feedServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.gets++
	if s.code != 0 {
		http.Error(w, "nope", s.code)
		return
	}
	if inm := r.Header.Get("If-None-Match"); inm != "" {
		s.conds++
		if inm == s.etag {
			w.WriteHeader(http.StatusNotModified)
			return
		}
	}
	w.Header().Set("ETag", s.etag)
	w.Header().Set("Last-Modified", "Tue, 01 Dec 2026 09:00:00 GMT")
	fmt.Fprint(w, s.body)
}

func rootsOf(t *testing.T, srv *httptest.Server) *x509.CertPool {
	t.Helper()
	return srv.Client().Transport.(*http.Transport).TLSClientConfig.RootCAs
}

type clock struct{ t atomic.Int64 }

func newClock() *clock {
	c := &clock{}
	c.t.Store(time.Date(2026, 12, 1, 9, 0, 0, 0, time.UTC).UnixNano())
	return c
}
func (c *clock) now() time.Time      { return time.Unix(0, c.t.Load()).UTC() }
func (c *clock) add(d time.Duration) { c.t.Add(int64(d)) }
func cfgURL(name, u string) Config   { return Config{Name: name, URL: u, MinPrefixV4: 8} }
func cfgPath(name, p string) Config  { return Config{Name: name, Path: p, MinPrefixV4: 8} }
func mustNew(t *testing.T, c Config, o Options) *Feed {
	t.Helper()
	f, err := New(c, o)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// refresh fetches and commits as the daemon would after applying.
func refresh(t *testing.T, f *Feed) *Update {
	t.Helper()
	u, err := f.Fetch(context.Background())
	if err != nil {
		t.Fatalf("fetch: %v", err)
	}
	if err := f.Commit(u, nil); err != nil {
		t.Fatalf("commit: %v", err)
	}
	return u
}

func diffStrings(d Diff) [3][]string {
	return [3][]string{strs(d.Added), strs(d.Removed), strs(d.Kept)}
}

func TestHTTPSRefresh(t *testing.T) {
	fs := &feedServer{}
	fs.set("# list\n1.0.0.0/24\n2.0.0.0/24\n3.0.0.1\n")
	srv := httptest.NewTLSServer(fs)
	defer srv.Close()
	clk := newClock()
	f := mustNew(t, cfgURL("t", srv.URL+"/list.txt"), Options{Now: clk.now, RootCAs: rootsOf(t, srv)})

	u := refresh(t, f)
	if d := cmp.Diff([3][]string{{"1.0.0.0/24", "2.0.0.0/24", "3.0.0.1/32"}, nil, nil}, diffStrings(u.Diff)); d != "" {
		t.Errorf("first load (-want +got):\n%s", d)
	}
	if want := clk.now().Add(3 * DefaultRefresh); !u.Expires.Equal(want) {
		t.Errorf("expires %v, want %v", u.Expires, want)
	}

	clk.add(time.Hour)
	fs.set("# list\n2.0.0.0/24\n3.0.0.1\n4.0.0.0/16\n")
	u = refresh(t, f)
	if d := cmp.Diff([3][]string{{"4.0.0.0/16"}, {"1.0.0.0/24"}, {"2.0.0.0/24", "3.0.0.1/32"}}, diffStrings(u.Diff)); d != "" {
		t.Errorf("refresh (-want +got):\n%s", d)
	}
	changed := clk.now()

	clk.add(time.Hour)
	u = refresh(t, f)
	if !u.NotModified {
		t.Error("third refresh: want a 304")
	}
	if d := cmp.Diff([3][]string{nil, nil, {"2.0.0.0/24", "3.0.0.1/32", "4.0.0.0/16"}}, diffStrings(u.Diff)); d != "" {
		t.Errorf("304: kept entries are renewed (-want +got):\n%s", d)
	}
	if fs.conds != 2 {
		t.Errorf("conditional requests: %d, want 2", fs.conds)
	}
	st := f.Status()
	if st.Entries != 3 || !st.LastSuccess.Equal(clk.now()) || !st.LastChange.Equal(changed) ||
		!st.Next.Equal(clk.now().Add(DefaultRefresh)) || st.LastError != "" {
		t.Errorf("status %+v", st)
	}

	// The persisted state restores into a new Feed, which then asks
	// conditionally and gets its 304.
	b, _ := f.State().MarshalBinary()
	var back State
	if err := back.UnmarshalBinary(b); err != nil {
		t.Fatal(err)
	}
	g := mustNew(t, cfgURL("t", srv.URL+"/list.txt"), Options{Now: clk.now, RootCAs: rootsOf(t, srv)})
	g.Restore(&back)
	if u := refresh(t, g); !u.NotModified || u.Diff.Kept.Len() != 3 || u.Diff.Changed() {
		t.Errorf("after restore: %+v", u)
	}
}

func TestHTTPSVerified(t *testing.T) {
	fs := &feedServer{}
	fs.set("1.0.0.0/24\n")
	srv := httptest.NewTLSServer(fs)
	defer srv.Close()
	f := mustNew(t, cfgURL("t", srv.URL), Options{}) // system roots do not know the test CA
	var uerr x509.UnknownAuthorityError
	if _, err := f.Fetch(context.Background()); !errors.As(err, &uerr) {
		t.Errorf("fetch from an unknown CA: %v, want x509.UnknownAuthorityError", err)
	}
}

func TestFailureKeepsLastGood(t *testing.T) {
	fs := &feedServer{}
	fs.set("1.0.0.0/24\n2.0.0.0/24\n")
	srv := httptest.NewServer(fs)
	defer srv.Close()
	clk := newClock()
	c := cfgURL("t", srv.URL)
	c.MaxStale = api.Duration(24 * time.Hour)
	f := mustNew(t, c, Options{Now: clk.now})
	refresh(t, f)
	good := f.State()

	for _, tc := range []struct {
		name  string
		setup func()
		is    error
	}{
		{"500", func() { fs.code = 500 }, nil},
		{"garbage", func() { fs.code = 0; fs.body = "<html>\n<body>oops</body>\n</html>\n"; fs.etag = `"g"` }, ErrGarbage},
		{"empty", func() { fs.body = "# nothing\n"; fs.etag = `"e"` }, ErrEmpty},
	} {
		fs.mu.Lock()
		tc.setup()
		fs.mu.Unlock()
		clk.add(time.Hour)
		u, err := f.Fetch(context.Background())
		var se *StatusError
		switch {
		case err == nil:
			t.Fatalf("%s: fetch succeeded", tc.name)
		case tc.is == nil && !(errors.As(err, &se) && se.Code == 500):
			t.Errorf("%s: err %v, want status 500", tc.name, err)
		case tc.is != nil && !errors.Is(err, tc.is):
			t.Errorf("%s: err %v, want %v", tc.name, err, tc.is)
		}
		if u.Diff.Changed() || u.Diff.Kept.Len() != 2 {
			t.Errorf("%s: a failed refresh must renew the last good entries only: %v", tc.name, diffStrings(u.Diff))
		}
		if err := f.Commit(u, nil); err != nil {
			t.Fatal(err)
		}
		st := f.Status()
		if f.State() != good || st.Entries != 2 || st.LastError == "" || st.Stale ||
			!st.LastRefresh.Equal(clk.now()) || st.LastSuccess.Equal(clk.now()) {
			t.Errorf("%s: status %+v", tc.name, st)
		}
	}
	if st := f.Status(); st.Failures != 3 || !st.Next.Equal(clk.now().Add(4*time.Minute)) {
		t.Errorf("backoff: %d failures, next %v", st.Failures, st.Next.Sub(clk.now()))
	}
	// Past max_stale the failing feed stops renewing: its entries then
	// expire in the kernel on their own.
	clk.add(24 * time.Hour)
	u, _ := f.Fetch(context.Background())
	if u.Diff.Kept.Len() != 0 || !f.Status().Stale {
		t.Errorf("stale: kept %d, status %+v", u.Diff.Kept.Len(), f.Status())
	}
	// Recovery: the server is fine again.
	fs.set("2.0.0.0/24\n3.0.0.0/24\n")
	u = refresh(t, f)
	if d := cmp.Diff([3][]string{{"3.0.0.0/24"}, {"1.0.0.0/24"}, {"2.0.0.0/24"}}, diffStrings(u.Diff)); d != "" {
		t.Errorf("recovery (-want +got):\n%s", d)
	}
	if st := f.Status(); st.LastError != "" || st.Failures != 0 || st.Stale {
		t.Errorf("after recovery: %+v", st)
	}
}

func TestApplyFailureAndConflict(t *testing.T) {
	fs := &feedServer{}
	fs.set("1.0.0.0/24\n")
	srv := httptest.NewServer(fs)
	defer srv.Close()
	f := mustNew(t, cfgURL("t", srv.URL), Options{})
	u, err := f.Fetch(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Commit(u, errors.New("kernel said no")); err != nil {
		t.Fatal(err)
	}
	if f.State() != nil || !strings.Contains(f.Status().LastError, "kernel said no") {
		t.Errorf("apply failure must not become the last good state: %+v", f.Status())
	}
	// Not applied, so the next fetch is unconditional and adds again.
	u1 := refresh(t, f)
	if u1.Diff.Added.Len() != 1 {
		t.Errorf("after failed apply: %v", diffStrings(u1.Diff))
	}
	// An update fetched against an older state is refused.
	if err := f.Commit(u, nil); !errors.Is(err, ErrConflict) {
		t.Errorf("stale commit: %v, want ErrConflict", err)
	}
}

func TestHTTPOversize(t *testing.T) {
	const max = 4096
	var served atomic.Int64
	mux := http.NewServeMux()
	mux.HandleFunc("/declared", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "100000000")
		w.WriteHeader(200)
	})
	mux.HandleFunc("/chunked", func(w http.ResponseWriter, r *http.Request) {
		line := []byte("198.51.100.1\n")
		for i := 0; i < 1<<20 && r.Context().Err() == nil; i++ {
			if _, err := w.Write(line); err != nil {
				return
			}
			served.Add(int64(len(line)))
			w.(http.Flusher).Flush()
		}
	})
	srv := httptest.NewServer(mux)
	defer srv.Close()
	for _, path := range []string{"/declared", "/chunked"} {
		c := cfgURL("t", srv.URL+path)
		c.MaxSize = max
		f := mustNew(t, c, Options{})
		if _, err := f.Fetch(context.Background()); !errors.Is(err, ErrTooLarge) {
			t.Errorf("%s: %v, want ErrTooLarge", path, err)
		}
	}
	// The client stopped reading: the server could not push all of its
	// 13 MiB (socket buffers take some, never the whole).
	if n := served.Load(); n >= 13<<20 {
		t.Errorf("server wrote %d bytes: the body was read whole", n)
	}
}

func TestHTTPSlow(t *testing.T) {
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, "1.2.3.4")
		w.(http.Flusher).Flush()
		select { // dribble: headers and one line, then nothing
		case <-r.Context().Done():
		case <-release:
		}
	}))
	defer srv.Close()
	defer close(release)
	c := cfgURL("t", srv.URL)
	c.Timeout = api.Duration(time.Second)
	f := mustNew(t, c, Options{})
	start := time.Now()
	_, err := f.Fetch(context.Background())
	if !errors.Is(err, ErrTimeout) {
		t.Errorf("slow server: %v, want ErrTimeout", err)
	}
	if el := time.Since(start); el > 10*time.Second {
		t.Errorf("timeout took %s", el)
	}
}

func TestRedirects(t *testing.T) {
	fs := &feedServer{}
	fs.set("1.0.0.0/24\n")
	mux := http.NewServeMux()
	mux.Handle("/feed", fs)
	mux.HandleFunc("/r/{n}", func(w http.ResponseWriter, r *http.Request) {
		var n int
		fmt.Sscan(r.PathValue("n"), &n)
		to := "/feed"
		if n > 1 {
			to = fmt.Sprintf("/r/%d", n-1)
		}
		http.Redirect(w, r, to, http.StatusFound)
	})
	mux.HandleFunc("/ftp", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "ftp://example.test/list", http.StatusFound)
	})
	mux.HandleFunc("/file", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "file:///etc/passwd", http.StatusFound)
	})
	plain := httptest.NewServer(mux)
	defer plain.Close()
	mux2 := http.NewServeMux()
	mux2.HandleFunc("/down", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, plain.URL+"/feed", http.StatusFound)
	})
	tlsSrv := httptest.NewTLSServer(mux2)
	defer tlsSrv.Close()

	for _, c := range []struct {
		url string
		ok  bool
	}{
		{plain.URL + fmt.Sprintf("/r/%d", MaxRedirects), true},
		{plain.URL + fmt.Sprintf("/r/%d", MaxRedirects+1), false},
		{plain.URL + "/ftp", false},
		{plain.URL + "/file", false},
		{tlsSrv.URL + "/down", false},
	} {
		f := mustNew(t, cfgURL("t", c.url), Options{RootCAs: rootsOf(t, tlsSrv)})
		_, err := f.Fetch(context.Background())
		if c.ok && err != nil {
			t.Errorf("%s: %v", c.url, err)
		}
		if !c.ok && !errors.Is(err, ErrRedirect) {
			t.Errorf("%s: %v, want ErrRedirect", c.url, err)
		}
	}
}

func TestFileFeed(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "list.netset")
	write := func(s string, mtime time.Time) {
		t.Helper()
		if err := os.WriteFile(path, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Chtimes(path, mtime, mtime); err != nil {
			t.Fatal(err)
		}
	}
	t0 := time.Date(2026, 11, 30, 0, 0, 0, 0, time.UTC)
	write("1.0.0.0/24\n2.0.0.0/24\n", t0)
	f := mustNew(t, cfgPath("file", path), Options{})
	if u := refresh(t, f); u.Diff.Added.Len() != 2 {
		t.Fatalf("first load: %v", diffStrings(u.Diff))
	}
	// Same mtime and size: not even read.
	if u := refresh(t, f); !u.NotModified || u.Diff.Kept.Len() != 2 {
		t.Errorf("unchanged file: %+v", u)
	}
	// Touched: read, same content, as a 304.
	write("1.0.0.0/24\n2.0.0.0/24\n", t0.Add(time.Hour))
	if u := refresh(t, f); !u.NotModified || u.Diff.Changed() || u.Diff.Kept.Len() != 2 {
		t.Errorf("touched file: %+v", u)
	}
	if !f.State().ModTime.Equal(t0.Add(time.Hour)) {
		t.Errorf("mtime not followed: %v", f.State().ModTime)
	}
	// Same size and mtime as before, other content: still caught once the
	// mtime moves.
	write("1.0.0.0/24\n3.0.0.0/24\n", t0.Add(2*time.Hour))
	u := refresh(t, f)
	if d := cmp.Diff([3][]string{{"3.0.0.0/24"}, {"2.0.0.0/24"}, {"1.0.0.0/24"}}, diffStrings(u.Diff)); d != "" {
		t.Errorf("changed file (-want +got):\n%s", d)
	}
	// Too large, missing, a FIFO (must not hang waiting for a writer).
	c := cfgPath("file", path)
	c.MaxSize = 8
	if _, err := mustNew(t, c, Options{}).Fetch(context.Background()); !errors.Is(err, ErrTooLarge) {
		t.Errorf("oversize file: %v", err)
	}
	if _, err := mustNew(t, cfgPath("file", filepath.Join(dir, "none")), Options{}).Fetch(context.Background()); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: %v", err)
	}
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := mustNew(t, cfgPath("file", fifo), Options{}).Fetch(context.Background()); !errors.Is(err, ErrNotRegular) {
		t.Errorf("fifo: %v", err)
	}
}

func TestConfig(t *testing.T) {
	cs, err := DecodeConfigs([]byte(`
- name: spamhaus-drop
  url: https://www.spamhaus.org/drop/drop.txt
  refresh: 12h
  min_prefix_v4: 8
- name: local
  path: /etc/parry/block.txt
  max_size: 1MiB
  action: reject
`))
	if err != nil {
		t.Fatal(err)
	}
	if c := cs[0]; c.For.D() != 36*time.Hour || c.MinPrefixV4 != 8 || c.MinPrefixV6 != DefaultMinV6 || c.MaxSize != DefaultMaxSize || c.Action != "drop" {
		t.Errorf("defaults: %+v", c)
	}
	if c := cs[1]; c.MaxSize != 1<<20 || c.Action != "reject" || c.Refresh.D() != DefaultRefresh {
		t.Errorf("second: %+v", c)
	}
	for _, bad := range []string{
		"- name: x\n  url: https://a/\n  refesh: 1h\n", // unknown key
		"- name: x\n  url: ftp://a/\n",
		"- name: x\n  url: https://u:p@a/\n",
		"- name: x\n  url: https://a/\n  path: /b\n",
		"- name: x\n  path: rel/b\n",
		"- name: X Y\n  path: /b\n",
		"- name: x\n  path: /b\n  min_prefix_v4: 0\n  min_prefix_v6: 129\n",
		"- name: x\n  path: /b\n  refresh: 10s\n",
		"- name: x\n  path: /b\n  refresh: 1h\n  for: 30m\n",
		"- name: x\n  path: /b\n  max_size: 1TiB\n",
		"- name: x\n  path: /b\n  format: json\n",
		"- name: x\n  path: /b\n  max_entries: 20000000\n",
		"- name: x\n  path: /b\n- name: x\n  path: /c\n",
	} {
		if _, err := DecodeConfigs([]byte(bad)); err == nil {
			t.Errorf("accepted:\n%s", bad)
		}
	}
}

func TestBusy(t *testing.T) {
	block := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		<-block
		fmt.Fprintln(w, "1.2.3.4")
	}))
	defer srv.Close()
	f := mustNew(t, cfgURL("t", srv.URL), Options{})
	done := make(chan error)
	go func() { _, err := f.Fetch(context.Background()); done <- err }()
	// Poll until the first fetch holds the feed.
	for deadline := time.Now().Add(5 * time.Second); !f.busy.Load(); {
		if time.Now().After(deadline) {
			t.Fatal("first fetch never started")
		}
		time.Sleep(time.Millisecond)
	}
	if _, err := f.Fetch(context.Background()); !errors.Is(err, ErrBusy) {
		t.Errorf("concurrent fetch: %v, want ErrBusy", err)
	}
	close(block)
	if err := <-done; err != nil {
		t.Error(err)
	}
}
