package e2e

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/parryhq/parry/agent/api"
	"github.com/parryhq/parry/test/daemon"
	"github.com/parryhq/parry/test/netns"
)

// listenIn opens a TCP listener on 127.0.0.1 inside ns (a socket keeps the
// namespace it was made in), from a locked thread that returns to the
// test's own namespace before it is unlocked.
func listenIn(t *testing.T, ns *netns.NS) net.Listener {
	t.Helper()
	type res struct {
		ln  net.Listener
		err error
	}
	done := make(chan res, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			done <- res{err: err}
			return // thread still ours and unchanged: unlock on exit
		}
		defer orig.Close()
		target, err := os.Open(ns.Path)
		if err != nil {
			runtime.UnlockOSThread()
			done <- res{err: err}
			return
		}
		defer target.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			done <- res{err: fmt.Errorf("setns: %w", err)}
			return
		}
		ln, lerr := net.Listen("tcp4", "127.0.0.1:0")
		if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
			// Never unlock a thread left in the test namespace: it dies with the goroutine.
			done <- res{ln: ln, err: fmt.Errorf("setns back: %w", err)}
			return
		}
		runtime.UnlockOSThread()
		done <- res{ln: ln, err: lerr}
	}()
	r := <-done
	if r.err != nil {
		if r.ln != nil {
			r.ln.Close()
		}
		t.Fatalf("listen in %s: %v", ns.Name, r.err)
	}
	return r.ln
}

// feedServer is a blocklist served over HTTP with an ETag: a request that
// sends the current ETag back gets 304.
type feedServer struct {
	mu               sync.Mutex
	body, etag       string
	gets, notChanged int
}

func (s *feedServer) set(body, etag string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.body, s.etag = body, etag
}

func (s *feedServer) counts() (int, int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.gets, s.notChanged
}

func (s *feedServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.gets++
	if r.Header.Get("If-None-Match") == s.etag {
		s.notChanged++
		w.WriteHeader(http.StatusNotModified)
		return
	}
	w.Header().Set("ETag", s.etag)
	fmt.Fprint(w, s.body)
}

func feedList(t *testing.T, d *daemon.Daemon) api.FeedInfo {
	t.Helper()
	var fl struct {
		OK bool `json:"ok"`
		api.FeedList
	}
	if err := json.Unmarshal([]byte(d.MustParry("feed", "list", "--json")), &fl); err != nil || len(fl.Feeds) != 1 {
		t.Fatalf("feed list --json: %v %+v", err, fl)
	}
	return fl.Feeds[0]
}

// A feed served by a local HTTP server, end to end through parryd: the
// first load blocks its entries (real packets dropped), a refresh with an
// addition and a removal blocks the new entry and lifts the removed one
// (packets pass again), while an admin's block of an entry the feed drops
// stays (the admin blocked it over the feed's block); a 304 renews the entries without a download; an entry
// overlapping the allowlist is carved around it; every block is
// marked feed:lab, and list --contains and why find them.
func TestFeedRefreshBlocksAndLifts(t *testing.T) {
	p := netns.NewPair(t)
	srv := &feedServer{}
	srv.set("# lab list\n192.0.2.2\n198.51.100.0/24 ; a net\n203.0.113.9\n10.9.0.0/16\n", `"v1"`)
	hs := httptest.NewUnstartedServer(srv)
	hs.Listener.Close()
	hs.Listener = listenIn(t, p.Host)
	hs.Start()
	defer hs.Close()

	d := daemon.New(t, p.Host, daemon.Options{Config: quietConfig + "allowlist: [10.9.0.0/24]\nfeeds:\n  - name: lab\n    url: " +
		hs.URL + "/list.txt\n    refresh: 1h\n    for: 2h\n"})
	d.Start()

	// First load: at start, without waiting for the interval.
	netns.Eventually(t, 20*time.Second, "the first load", func() bool { return feedList(t, d).LastApply != nil })
	fi := feedList(t, d)
	if fi.Entries != 4 || fi.LastError != "" || fi.LastApply.Error != "" {
		t.Fatalf("after the first load: %+v %+v", fi, fi.LastApply)
	}
	if fi.LastApply.Added != 3+8 || fi.LastApply.Carved != 1 || len(fi.LastApply.Refused) != 0 {
		t.Errorf("first apply %+v: want 3 added, and 10.9.0.0/16 carved around the allowlisted /24 into 8", fi.LastApply)
	}
	// The admin takes 203.0.113.9 over: the feed must not lift it.
	d.MustParry("block", "203.0.113.9", "--for", "6h", "--reason", "admin's own")
	if p.Peer.Ping(p.HostV4) {
		t.Fatal("192.0.2.2 listed by the feed still reaches the host")
	}
	if !p.Peer.Ping(p.HostV6) {
		t.Fatal("2001:db8::2, not listed yet, cannot reach the host")
	}
	var list struct {
		Blocks []api.BlockInfo `json:"blocks"`
	}
	if err := json.Unmarshal([]byte(d.MustParry("list", "--json")), &list); err != nil {
		t.Fatal(err)
	}
	marks := map[string]string{}
	for _, b := range list.Blocks {
		marks[b.Target] = b.Source + "|" + b.Origin
	}
	if marks["192.0.2.2"] != "feed:lab|feed:lab" || marks["198.51.100.0/24"] != "feed:lab|feed:lab" || marks["203.0.113.9"] != "cli|" {
		t.Errorf("list marks %v: feed blocks marked feed:lab, the admin's its own", marks)
	}
	if out := d.MustParry("feed", "list"); !strings.Contains(out, "1 entries carved") || !strings.Contains(out, "entries: 4") {
		t.Errorf("feed list:\n%s", out)
	}

	// Refresh with one addition and two removals: 192.0.2.2 lifted, the
	// peer's IPv6 blocked, the admin's 203.0.113.9 kept.
	srv.set("198.51.100.0/24\n2001:db8::2\n10.9.0.0/16\n", `"v2"`)
	out := d.MustParry("feed", "refresh", "lab")
	if !strings.Contains(out, "1 added") || !strings.Contains(out, "1 lifted") || !strings.Contains(out, "1 left to another cause") {
		t.Errorf("refresh output:\n%s", out)
	}
	if !p.Peer.Ping(p.HostV4) {
		t.Fatal("192.0.2.2, removed from the feed, is still dropped")
	}
	if p.Peer.Ping(p.HostV6) {
		t.Fatal("2001:db8::2, added to the feed, still reaches the host")
	}
	k := kernelElems(t, p.Host, d.Table)
	if _, ok := k["203.0.113.9"]; !ok {
		t.Errorf("the admin's block left the kernel when the feed dropped it: %v", k)
	}
	if _, ok := k["192.0.2.2"]; ok {
		t.Errorf("lifted entry still in the kernel: %v", k)
	}

	// list --contains and why find the feed's /24 around an address.
	if out := d.MustParry("list", "--contains", "198.51.100.9", "--source", "feed:lab"); !strings.Contains(out, "198.51.100.0/24") {
		t.Errorf("list --contains --source:\n%s", out)
	}
	if out := d.MustParry("why", "198.51.100.9"); !strings.Contains(out, "198.51.100.0/24") || !strings.Contains(out, "source feed:lab") {
		t.Errorf("why:\n%s", out)
	}
	if _, _, code := d.Parry("why", "192.0.2.2"); code != 1 {
		t.Errorf("why of a lifted address: exit %d, want 1 (not blocked)", code)
	}

	// A 304: nothing downloaded, the entries renewed.
	_, before := srv.counts()
	fi = feedList(t, d)
	d.MustParry("feed", "refresh", "lab")
	if _, after := srv.counts(); after != before+1 {
		t.Errorf("304s %d -> %d: the refresh did not send the ETag back", before, after)
	}
	fi2 := feedList(t, d)
	if fi2.LastApply.Renewed != 2+8 || fi2.LastApply.Added != 0 || fi2.LastApply.Lifted != 0 || !fi2.LastSuccess.After(fi.LastSuccess) {
		t.Errorf("after a 304: %+v (success %v, before %v): want the 2 entries renewed", fi2.LastApply, fi2.LastSuccess, fi.LastSuccess)
	}
	if p.Peer.Ping(p.HostV6) {
		t.Fatal("renewed entry no longer dropped")
	}
	evs := d.AuditEvents("feed")
	if len(evs) != 3 {
		t.Fatalf("audit: %d feed events, want 3 (one per refresh)", len(evs))
	}
	if evs[1]["feed"] != "lab" || evs[1]["lifted"] != float64(1) || evs[1]["source"] != "feed:lab" {
		t.Errorf("audit of the second refresh: %v", evs[1])
	}

	// The state survives a restart: no fetch at once, the blocks stay.
	gets, _ := srv.counts()
	d.Stop()
	d.Start()
	if fi := feedList(t, d); fi.Entries != 3 || fi.Next.Before(time.Now().Add(30*time.Minute)) {
		t.Errorf("after a restart: %+v; want the 3 entries restored and the next refresh an interval after the last", fi)
	}
	if g, _ := srv.counts(); g != gets {
		t.Errorf("fetched at once after a restart (%d -> %d requests)", gets, g)
	}
	if p.Peer.Ping(p.HostV6) {
		t.Fatal("feed entry not dropped after a restart")
	}
}

// A feed's /8 with an allowlisted /24 inside it: the /24 gets through,
// the rest of the /8 is dropped (real packets), and the kernel holds the
// /8 minus the /24 and minus the host's own address.
func TestFeedSlashEightCarvesTheAllowlist(t *testing.T) {
	p := netns.NewPair(t)
	p.Host.MustRun(t, "ip", "addr", "add", "10.1.1.1/8", "dev", p.HostIf)
	p.Peer.MustRun(t, "ip", "addr", "add", "10.2.2.2/8", "dev", p.PeerIf)
	p.Peer.MustRun(t, "ip", "addr", "add", "10.3.3.3/8", "dev", p.PeerIf)
	host, allowed, listed := netip.MustParseAddr("10.1.1.1"), netip.MustParseAddr("10.2.2.2"), netip.MustParseAddr("10.3.3.3")
	file := filepath.Join(t.TempDir(), "level1.netset")
	if err := os.WriteFile(file, []byte("# firehol-like\n10.0.0.0/8\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	d := daemon.New(t, p.Host, daemon.Options{Config: quietConfig + "allowlist: [10.2.2.0/24]\nfeeds:\n  - name: level1\n    path: " +
		file + "\n    min_prefix_v4: 8\n"})
	d.Start()
	netns.Eventually(t, 20*time.Second, "the first load", func() bool { return feedList(t, d).LastApply != nil })
	if la := feedList(t, d).LastApply; la.Carved != 1 || la.Error != "" {
		t.Fatalf("apply %+v: want the /8 carved", la)
	}
	if !pingFrom(p.Peer, allowed, host) {
		t.Fatal("10.2.2.2 in the allowlisted /24 is dropped")
	}
	if pingFrom(p.Peer, listed, host) {
		t.Fatal("10.3.3.3, in the feed's /8 and not allowlisted, still reaches the host")
	}
	k := kernelElems(t, p.Host, d.Table)
	for _, want := range []string{"10.2.3.0/24", "10.128.0.0/9", "10.1.1.0"} {
		if _, ok := k[want]; !ok {
			t.Errorf("kernel lacks %s: %v", want, k)
		}
	}
	for _, not := range []string{"10.0.0.0/8", "10.2.2.0/24", "10.1.1.1"} {
		if _, ok := k[not]; ok {
			t.Errorf("kernel holds %s: %v", not, k)
		}
	}
}
