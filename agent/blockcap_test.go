package agent

import (
	"fmt"
	"testing"
	"time"

	"github.com/parryhq/parry/agent/api"
	"github.com/parryhq/parry/agent/control"
	"github.com/parryhq/parry/agent/enforce"
	"github.com/parryhq/parry/response"
)

// A non-admin sender's signals make at most sender_block_cap.max blocks
// per interval; the cap is audited once when it starts refusing, and once
// with the count when the window after it opens; admins are not capped;
// a decision that changes nothing costs nothing.
func TestSenderBlockCap(t *testing.T) {
	clk := &clock{t: time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)}
	cfg := testConfig(t)
	cfg.Response.Senders = []response.SenderRule{{User: "www-data", Kinds: []string{"scan_detected"}}}
	cfg.Response.SenderBlockCap = response.BlockCap{Max: 3, Per: api.Duration(time.Minute)}
	fw := newFakeFW()
	d := newTestDaemon(t, cfg, fw, clk)
	scan := func(p control.Peer, ip string) signalAnswer {
		t.Helper()
		a := signal(t, d, p, `{"op":"signal","kind":"scan_detected","ip":"`+ip+`"}`)
		if !a.OK || len(a.Decisions) != 1 {
			t.Fatalf("signal for %s: %+v", ip, a)
		}
		return a
	}
	refused := func(a signalAnswer) bool {
		return a.Decisions[0].Error != nil && a.Decisions[0].Error.Code == enforce.CodeSenderBlockCap
	}
	for i := 1; i <= 3; i++ {
		if a := scan(webPeer, fmt.Sprintf("203.0.113.%d", i)); a.Decisions[0].Enforced == nil {
			t.Fatalf("block %d under the cap: %+v", i, a.Decisions[0])
		}
	}
	clk.Add(10 * time.Second)
	for i := 4; i <= 5; i++ {
		if a := scan(webPeer, fmt.Sprintf("203.0.113.%d", i)); !refused(a) {
			t.Errorf("block %d over the cap: %+v; want %s", i, a.Decisions[0], enforce.CodeSenderBlockCap)
		}
	}
	admin(t, d, `{"op":"block","targets":["203.0.113.50"],"permanent":true}`)
	if a := scan(webPeer, "203.0.113.50"); a.Decisions[0].Enforced == nil || len(a.Decisions[0].Enforced.Kept) != 1 {
		t.Errorf("a block that changes nothing: %+v; want it kept, not refused", a.Decisions[0])
	}
	if a := scan(rootPeer, "203.0.113.9"); a.Decisions[0].Enforced == nil {
		t.Errorf("an admin's signal: %+v; want it not capped", a.Decisions[0])
	}
	for i, want := range map[int]bool{1: true, 2: true, 3: true, 4: false, 5: false, 9: true, 50: true} {
		if got := fw.covers(fmt.Sprintf("203.0.113.%d", i)); got != want {
			t.Errorf("kernel blocks 203.0.113.%d: %v; want 3 under the cap and the admin's two", i, got)
		}
	}
	st := statusOf(t, d).Policy.SenderBlockCap
	if st == nil || !st.Refusing || st.Blocks != 3 || st.Refused != 2 || st.RefusedTotal != 2 || st.Max != 3 ||
		!st.WindowEnds.Equal(clk.Now().Add(50*time.Second)) {
		t.Errorf("status: %+v", st)
	}
	caps := auditEvents(t, d, "sender_block_cap")
	if len(caps) != 1 || caps[0]["blocks"] != 3.0 || caps[0]["max"] != 3.0 || caps[0]["per"] != "1m0s" {
		t.Errorf("audit lines when the cap was hit: %v; want one with blocks 3", caps)
	}
	if r := auditEvents(t, d, "refuse"); len(r) != 0 {
		t.Errorf("refusals audited one by one: %v", r)
	}

	clk.Add(50 * time.Second) // the window ends
	if a := scan(webPeer, "203.0.113.6"); a.Decisions[0].Enforced == nil {
		t.Errorf("first block of the next window: %+v", a.Decisions[0])
	}
	ends := auditEvents(t, d, "sender_block_cap_end")
	if len(ends) != 1 || ends[0]["refused"] != 2.0 {
		t.Errorf("audit lines after the capped window: %v; want one with refused 2", ends)
	}
	if st := statusOf(t, d).Policy.SenderBlockCap; st.Refusing || st.Blocks != 1 || st.Refused != 0 || st.RefusedTotal != 2 {
		t.Errorf("status in the next window: %+v", st)
	}
}

func TestSenderBlockCapDefault(t *testing.T) {
	eng, err := response.New(response.Config{}, response.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if c := eng.Config().SenderBlockCap; c != (response.BlockCap{Max: 100, Per: api.Duration(time.Minute)}) {
		t.Errorf("default sender_block_cap %+v; want 100 per 1m", c)
	}
}
