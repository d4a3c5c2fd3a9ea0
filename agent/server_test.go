package agent

import (
	"bufio"
	"context"
	"encoding/json"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/parryhq/parry/agent/api"
	"github.com/parryhq/parry/agent/control"
)

// serve starts the daemon's control socket in a temp dir and returns a
// dialer.
func serve(t *testing.T, d *Daemon) func() net.Conn {
	t.Helper()
	cfg := d.Config()
	ln, err := control.Listen(cfg.Socket, cfg.Control)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { d.server.Serve(ctx, ln); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return func() net.Conn {
		c, err := net.Dial("unix", d.Config().Socket)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
}

type wireResp struct {
	OK    bool            `json:"ok"`
	ID    json.RawMessage `json:"id"`
	Error *api.Error      `json:"error"`
	Added int             `json:"added"`
}

func readResp(t *testing.T, r *bufio.Reader) wireResp {
	t.Helper()
	line, err := r.ReadBytes('\n')
	if err != nil {
		t.Fatalf("read response: %v", err)
	}
	var w wireResp
	if err := json.Unmarshal(line, &w); err != nil {
		t.Fatalf("response %q: %v", line, err)
	}
	if !w.OK && (w.Error == nil || w.Error.Code == "" || w.Error.Message == "") {
		t.Fatalf("error response without code and message: %s", line)
	}
	return w
}

func TestProtocolBadInputKeepsConnectionAndState(t *testing.T) {
	clk := &clock{t: time.Now()}
	fw := newFakeFW()
	d := newTestDaemon(t, testConfig(t), fw, clk)
	c := serve(t, d)()
	r := bufio.NewReader(c)
	big := `{"op":"block","targets":["` + strings.Repeat("1", 1<<20) + `"]}`
	tests := []struct{ line, code string }{
		{"hello", api.CodeBadRequest},
		{`{"op":"block","targets":["203.0.113.7"]`, api.CodeBadRequest}, // half a line
		{`[1,2]`, api.CodeBadRequest},
		{`null`, api.CodeBadRequest},
		{`{"op":42}`, api.CodeBadRequest},
		{`{"targets":[]}`, api.CodeBadRequest},
		{`{"op":"nope"}`, api.CodeUnknownOp},
		{`{"op":"block","targets":["203.0.113.7"],"bogus":1}`, api.CodeBadRequest},
		{`{"op":"block","targets":"203.0.113.7"}`, api.CodeBadRequest},
		{`{"op":"block","targets":[]}`, api.CodeBadRequest},
		{`{"op":"block","targets":["not-an-ip"]}`, api.CodeInvalidTarget},
		{`{"op":"block","targets":["203.0.113.7","300.1.1.1"]}`, api.CodeInvalidTarget},
		{`{"op":"block","targets":["127.0.0.1"]}`, api.CodeLoopback},
		{`{"op":"block","targets":["203.0.113.7"],"for":"forever"}`, api.CodeInvalidDuration},
		{`{"op":"block","targets":["203.0.113.7"],"for":"1h","permanent":true}`, api.CodeBadRequest},
		{big, api.CodeLineTooLong},
		{"\x00\xff\xfe", api.CodeBadRequest},
		{`{"op":"block","id":{"x":1},"targets":["203.0.113.7"]}`, api.CodeBadRequest},
	}
	for _, tt := range tests {
		if _, err := c.Write([]byte(tt.line + "\n")); err != nil {
			t.Fatal(err)
		}
		w := readResp(t, r)
		if w.OK || w.Error.Code != tt.code {
			t.Errorf("%.60q: got ok=%v %+v, want %s", tt.line, w.OK, w.Error, tt.code)
		}
	}
	if s := fw.state(); s != "" {
		t.Fatalf("bad input changed the kernel: %q", s)
	}
	if n := statusOf(t, d).ActiveBlocks; n != 0 {
		t.Fatalf("bad input changed the store: %d blocks", n)
	}
	// The same connection still works, ids are echoed, and pipelining keeps order.
	c.Write([]byte(`{"op":"ping","id":1}` + "\n" + `{"op":"block","id":"b","targets":["203.0.113.7"],"for":"1h"}` + "\n" + `{"op":"status","id":3}` + "\n"))
	for _, id := range []string{"1", `"b"`, "3"} {
		w := readResp(t, r)
		if !w.OK || string(w.ID) != id {
			t.Fatalf("pipelined response: %+v, want ok with id %s", w, id)
		}
	}
	if fw.state() != "block 203.0.113.7/32 timeout=1h0m0s" {
		t.Fatalf("kernel: %q", fw.state())
	}
}

func TestForbiddenForNonAdmins(t *testing.T) {
	clk := &clock{t: time.Now()}
	d := newTestDaemon(t, testConfig(t), newFakeFW(), clk)
	peer := control.Peer{UID: 1000, User: "alice"}
	var w wireResp
	json.Unmarshal(d.server.HandleLine(context.Background(), peer, []byte(`{"op":"block","targets":["203.0.113.7"]}`)), &w)
	if w.OK || w.Error.Code != api.CodeForbidden {
		t.Fatalf("non-admin block: %+v", w)
	}
	json.Unmarshal(d.server.HandleLine(context.Background(), peer, []byte(`{"op":"ping"}`)), &w)
	if !w.OK {
		t.Fatalf("non-admin ping: %+v", w)
	}
	peer = control.ResolvePeer(control.Peer{UID: 0, GID: 0}, nil)
	if !peer.Admin {
		t.Fatal("root is not admin")
	}
}

func TestRateLimit(t *testing.T) {
	cfg := testConfig(t)
	cfg.Control.Rate, cfg.Control.Burst = 1, 3
	d := newTestDaemon(t, cfg, newFakeFW(), &clock{t: time.Now()})
	peer := control.Peer{UID: 0, Admin: true}
	limited := 0
	for range 10 {
		var w wireResp
		json.Unmarshal(d.server.HandleLine(context.Background(), peer, []byte(`{"op":"ping"}`)), &w)
		if !w.OK && w.Error.Code == api.CodeRateLimited {
			limited++
		}
	}
	if limited < 6 {
		t.Fatalf("rate limit: only %d of 10 limited with burst 3", limited)
	}
}

func TestTooManyConnections(t *testing.T) {
	cfg := testConfig(t)
	cfg.Control.MaxConnections = 1
	d := newTestDaemon(t, cfg, newFakeFW(), &clock{t: time.Now()})
	dial := serve(t, d)
	c1 := dial()
	c1.Write([]byte(`{"op":"ping"}` + "\n"))
	readResp(t, bufio.NewReader(c1)) // c1 is being served
	c2 := dial()
	w := readResp(t, bufio.NewReader(c2))
	if w.OK || w.Error.Code != api.CodeTooManyConns {
		t.Fatalf("second connection: %+v", w)
	}
}
