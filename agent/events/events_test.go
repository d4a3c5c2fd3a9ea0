package events

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/parryhq/parry/agent/audit"
	"github.com/parryhq/parry/agent/control"
	"golang.org/x/sys/unix"
)

func openLog(t testing.TB) (*audit.Log, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "audit.log")
	l, err := audit.Open(path, time.Now)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l, path
}

func line(seq uint64, name string) []byte {
	return fmt.Appendf(nil, `{"seq":%d,"event":%q}`+"\n", seq, name)
}

// TestHubOrdersAppends: appends reported out of order (concurrent
// appenders after the log's lock) are delivered in seq order.
func TestHubOrdersAppends(t *testing.T) {
	h := NewHub(16)
	h.Start(10)
	s := h.Subscribe(nil)
	defer s.Close()
	h.Appended(12, 14, []string{"b", "c"}, append(line(13, "b"), line(14, "c")...))
	if got := s.Take(nil); len(got) != 0 {
		t.Fatalf("delivered %d events before seq 11", len(got))
	}
	h.Appended(10, 12, []string{"a"}, line(12, "a")) // a rotation took seq 11: only 12 is tapped
	var seqs []uint64
	for _, it := range s.Take(nil) {
		seqs = append(seqs, it.Seq)
	}
	if fmt.Sprint(seqs) != "[12 13 14]" {
		t.Fatalf("seqs %v, want [12 13 14]", seqs)
	}
}

// TestHubOverflowCountsMissed: a full queue drops what comes and counts
// it; the count comes with the next event, where the gap is.
func TestHubOverflowCountsMissed(t *testing.T) {
	h := NewHub(8)
	s := h.Subscribe(func(name string) bool { return name != "skip" })
	defer s.Close()
	for seq := uint64(1); seq <= 20; seq++ {
		h.Appended(seq-1, seq, []string{"x"}, line(seq, "x"))
	}
	h.Appended(20, 21, []string{"skip"}, line(21, "skip")) // filtered: not missed
	got := s.Take(nil)
	if len(got) != 9 || got[7].Seq != 8 || got[8].Line != nil || got[8].Missed != 12 || got[8].After != 8 || got[8].MissedMax != 20 {
		t.Fatalf("got %+v; want seqs 1..8 then a gap of 12 after 8", got)
	}
	for seq := uint64(22); seq <= 30; seq++ {
		h.Appended(seq-1, seq, []string{"x"}, line(seq, "x"))
	}
	got = s.Take(nil)
	if len(got) != 9 || got[0].Seq != 22 || got[0].Missed != 0 || got[8].Missed != 1 {
		t.Fatalf("after the gap: %+v", got)
	}
}

// TestReplayJoinsLive: a stream with a replay, started while four
// goroutines append, delivers every seq from the first to the last
// exactly once, in order: subscribed first, replayed to the file's end,
// live events up to it dropped.
func TestReplayJoinsLive(t *testing.T) {
	l, path := openLog(t)
	h := NewHub(1 << 16)
	h.Start(l.SetTap(h))
	for i := range 500 {
		if err := l.Append("block", map[string]any{"i": i}); err != nil {
			t.Fatal(err)
		}
	}
	var wg sync.WaitGroup
	start := make(chan struct{})
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			for i := range 500 {
				if err := l.Append("unblock", map[string]any{"g": g, "i": i}); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	st := h.Open(Options{Since: time.Now().Add(-time.Hour), AuditPath: path})
	defer st.Close()
	rawSub := h.Subscribe(nil)
	defer rawSub.Close()
	server, cl := net.Pipe()
	defer cl.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- st.Run(ctx, control.NewStreamWriter(server, 10*time.Second)) }()
	close(start)
	r := bufio.NewReader(cl)
	const last = 500 + 4*500
	var want uint64 = 1
	replayed, live := 0, false
	var liveAfter uint64
	_ = cl.SetReadDeadline(time.Now().Add(30 * time.Second))
	for want <= last || !live {
		b, err := r.ReadBytes('\n')
		if err != nil {
			t.Fatalf("read: %v (waiting for seq %d)", err, want)
		}
		var m struct {
			Seq      uint64 `json:"seq"`
			Live     bool   `json:"live"`
			Replayed int    `json:"replayed"`
			Missed   int    `json:"missed"`
			After    uint64 `json:"after_seq"`
		}
		if err := json.Unmarshal(b, &m); err != nil {
			t.Fatalf("line %q: %v", b, err)
		}
		switch {
		case m.Live:
			replayed, live, liveAfter = m.Replayed, true, m.After
			if want-1 != uint64(replayed) {
				t.Fatalf("live marker after seq %d says %d replayed", want-1, replayed)
			}
		case m.Missed > 0:
			t.Fatalf("missed %d events (queue of 65536)", m.Missed)
		case m.Seq != want:
			var hubSeqs []uint64
			for _, it := range rawSub.Take(nil) {
				if it.Seq >= want-2 && it.Seq <= m.Seq+2 {
					hubSeqs = append(hubSeqs, it.Seq)
				}
			}
			t.Fatalf("seq %d, want %d: a gap or a duplicate at the join (live %v, replayed %d, after %d); hub delivered %v", m.Seq, want, live, replayed, liveAfter, hubSeqs)
		default:
			want++
		}
	}
	wg.Wait()
	cancel()
	cl.Close()
	<-done
	if replayed < 500 {
		t.Errorf("replayed %d events, want at least the 500 appended before", replayed)
	}
	t.Logf("%d events replayed, %d live", replayed, last-replayed)
}

// TestLiveLineIsTheDecodedOne: the stream line cut from an audit line
// without decoding (live) is byte for byte the decoded one (event), for
// fields with nested chain-like keys, HTML characters, control
// characters, and none at all.
func TestLiveLineIsTheDecodedOne(t *testing.T) {
	l, path := openLog(t)
	h := NewHub(64)
	h.Start(l.SetTap(h))
	s := h.Subscribe(nil)
	defer s.Close()
	for _, f := range []any{
		map[string]any{"targets": []string{"203.0.113.7"}, "reason": "<b>&\x1b[31m", "attrs": map[string]string{"prev": "x", ",\"prev\":\"": "y"}},
		nil,
		map[string]any{},
		map[string]any{"fields": ",\"fields\":1"},
	} {
		if err := l.Append("block", f); err != nil {
			t.Fatal(err)
		}
	}
	st := &Stream{path: path}
	for _, it := range s.Take(nil) {
		fast := control.NewStreamWriter(nil, 0)
		slow := control.NewStreamWriter(nil, 0)
		st.live(fast, it)
		st.event(slow, it.Line)
		if a, b := fast.Bytes(), slow.Bytes(); string(a) != string(b) {
			t.Errorf("audit line %s\n live %s\n want %s", it.Line, a, b)
		}
	}
}

// TestStalledSubscriberDropped: a subscriber that does not read for the
// write timeout is dropped (Run ends with the write error) while the
// appends go on unhindered; what it was sent stays whole lines.
func TestStalledSubscriberDropped(t *testing.T) {
	l, _ := openLog(t)
	h := NewHub(64)
	h.Start(l.SetTap(h))
	st := h.Open(Options{})
	defer st.Close()
	fds, err := unixPair(t)
	if err != nil {
		t.Fatal(err)
	}
	server, cl := fds[0], fds[1]
	done := make(chan error, 1)
	go func() { done <- st.Run(context.Background(), control.NewStreamWriter(server, 200*time.Millisecond)) }()
	big := map[string]string{"reason": string(make([]byte, 4096))}
	for i := 0; ; i++ {
		if err := l.Append("block", big); err != nil {
			t.Fatal(err)
		}
		select {
		case err := <-done:
			if !isWriteErr(err) {
				t.Fatalf("Run: %v, want a write error", err)
			}
			t.Logf("dropped after %d appends", i+1)
			server.Close()
			b, _ := io.ReadAll(cl)
			if i := bytes.LastIndexByte(b, '\n'); i >= 0 {
				for l := range bytes.Lines(b[:i+1]) {
					if !json.Valid(l) {
						t.Fatalf("a line sent is not JSON: %.80q", l)
					}
				}
			}
			return
		default:
		}
		if i > 100000 {
			t.Fatal("a subscriber that never reads was never dropped")
		}
	}
}

func unixPair(t *testing.T) ([2]net.Conn, error) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM, 0)
	if err != nil {
		return [2]net.Conn{}, err
	}
	var out [2]net.Conn
	for i, fd := range fds {
		f := os.NewFile(uintptr(fd), "socketpair")
		c, err := net.FileConn(f)
		f.Close()
		if err != nil {
			return out, err
		}
		t.Cleanup(func() { c.Close() })
		out[i] = c
	}
	return out, nil
}

// TestHubLateAppendCountedMissed: an append overtaken by more than
// maxPending others is skipped, and counted missed when it comes, never
// silently lost.
func TestHubLateAppendCountedMissed(t *testing.T) {
	h := NewHub(maxPending + 16)
	s := h.Subscribe(nil)
	defer s.Close()
	for seq := uint64(2); seq <= maxPending+2; seq++ { // seq 1 is late
		h.Appended(seq-1, seq, []string{"x"}, line(seq, "x"))
	}
	h.Appended(0, 1, []string{"x"}, line(1, "x"))
	got := s.Take(nil)
	if len(got) != maxPending+2 || got[0].Seq != 2 || got[len(got)-1].Line != nil || got[len(got)-1].Missed != 1 {
		t.Fatalf("%d items, first %+v, last %+v; want seqs 2..%d then 1 missed", len(got), got[0], got[len(got)-1], maxPending+2)
	}
}
