package agent

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/parryhq/parry/agent/api"
	"github.com/parryhq/parry/firewall"
	"github.com/parryhq/parry/response"
)

// pollFor waits up to 10 s for cond.
func pollFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for end := time.Now().Add(10 * time.Second); !cond(); {
		if time.Now().After(end) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond) // polling interval, not synchronisation
	}
}

// TestGroupCommit: while one commit is in flight (the kernel holds it),
// requests from another connection — pipelined on one connection, and
// from a third — join the next group: its blocks share one kernel
// transaction; the member the guard refuses fails alone; a block and an
// unblock of one target apply in arrival order; the answers on the
// pipelined connection come in request order.
func TestGroupCommit(t *testing.T) {
	clk := &clock{t: t0}
	fw := newFakeFW()
	d := newTestDaemon(t, testConfig(t), fw, clk)
	dial := serve(t, d)

	hold, entered := make(chan struct{}), make(chan struct{}, 1)
	fw.mu.Lock()
	fw.hold, fw.entered = hold, entered
	fw.mu.Unlock()
	first := dial()
	fmt.Fprintf(first, `{"op":"block","id":"first","targets":["203.0.113.1"],"for":"1h"}`+"\n")
	<-entered // the first commit is in flight, holding the path
	fw.mu.Lock()
	fw.hold = nil // the next commits go through
	fw.mu.Unlock()
	calls := fw.blockCalls + fw.unblocks // the first commit's kernel call counts when it returns

	pipe := dial()
	reqs := []string{
		`{"op":"block","id":1,"targets":["203.0.113.2"],"for":"1h"}`,
		`{"op":"block","id":2,"targets":["127.0.0.1"],"for":"1h"}`, // the guard refuses it
		`{"op":"block","id":3,"targets":["203.0.113.3"],"for":"1h"}`,
		`{"op":"unblock","id":4,"targets":["203.0.113.2"]}`, // after its block: ends unblocked
		`{"op":"block","id":5,"targets":["203.0.113.4"],"for":"1h"}`,
		`{"op":"unblock","id":6,"targets":["203.0.113.4"]}`,
		`{"op":"block","id":7,"targets":["203.0.113.4"],"for":"2h"}`, // blocked again, in the end
	}
	if _, err := pipe.Write([]byte(strings.Join(reqs, "\n") + "\n")); err != nil {
		t.Fatal(err)
	}
	other := dial()
	fmt.Fprintf(other, `{"op":"block","id":"other","targets":["203.0.113.5"],"for":"1h"}`+"\n")
	pollFor(t, "8 decisions queued", func() bool { return d.path.Waiting() == len(reqs)+1 })
	close(hold)

	if w := readResp(t, bufio.NewReader(first)); !w.OK {
		t.Fatalf("first: %+v", w.Error)
	}
	if w := readResp(t, bufio.NewReader(other)); !w.OK {
		t.Fatalf("other: %+v", w.Error)
	}
	r := bufio.NewReader(pipe)
	for i := range reqs {
		w := readResp(t, r)
		if string(w.ID) != fmt.Sprint(i+1) {
			t.Fatalf("answer %d has id %s: answers out of request order", i+1, w.ID)
		}
		if wantOK := i+1 != 2; w.OK != wantOK {
			t.Errorf("request %d: ok=%v (%+v), want %v", i+1, w.OK, w.Error, wantOK)
		}
		if i+1 == 2 && api.CodeOf(w.Error) != api.CodeLoopback {
			t.Errorf("refused member: %+v, want code %s", w.Error, api.CodeLoopback)
		}
	}
	// Runs: [block .2 .3 (+.5)] [unblock .2] [block .4 (+.5)] [unblock .4] [block .4 (+.5)]
	// — one kernel transaction (the union's diff: an unblock of .2 out of
	// the piece .2/31 re-adds .3) per run, and the first's.
	if n := fw.blockCalls + fw.unblocks - calls; n != 1+5 {
		t.Errorf("%d kernel transactions for the first and the group, want 1+5 (block sizes %v)", n, fw.blockSizes)
	}
	want := "block 203.0.113.1/32 timeout=1h0m0s\nblock 203.0.113.3/32 timeout=1h0m0s\n" +
		"block 203.0.113.4/32 timeout=2h0m0s\nblock 203.0.113.5/32 timeout=1h0m0s"
	if diff := cmp.Diff(want, fw.state()); diff != "" {
		t.Errorf("kernel (-want +got):\n%s", diff)
	}
	var got []string
	for _, b := range blocksOf(t, d) {
		got = append(got, b.Target)
	}
	if diff := cmp.Diff([]string{"203.0.113.1", "203.0.113.3", "203.0.113.4", "203.0.113.5"}, got); diff != "" {
		t.Errorf("store (-want +got):\n%s", diff)
	}
	verifyAuditOK(t, d.Config().StateDir)
}

// TestPipelinedReadSeesEarlierWrites: a read pipelined behind a block on
// the same connection waits for the block's answer, so it sees it.
func TestPipelinedReadSeesEarlierWrites(t *testing.T) {
	clk := &clock{t: t0}
	fw := newFakeFW()
	d := newTestDaemon(t, testConfig(t), fw, clk)
	c := serve(t, d)()
	var lines []string
	for i := range 20 {
		lines = append(lines, fmt.Sprintf(`{"op":"block","id":%d,"targets":["203.0.113.%d"],"for":"1h"}`, i, i+1))
	}
	lines = append(lines, `{"op":"status","id":"st"}`)
	if _, err := c.Write([]byte(strings.Join(lines, "\n") + "\n")); err != nil {
		t.Fatal(err)
	}
	r := bufio.NewReader(c)
	for i := range 20 {
		if w := readResp(t, r); !w.OK || string(w.ID) != fmt.Sprint(i) {
			t.Fatalf("answer %d: %+v id %s", i, w.Error, w.ID)
		}
	}
	line, err := r.ReadBytes('\n')
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(line), `"active_blocks":20`) {
		t.Fatalf("status pipelined behind 20 blocks does not see them: %s", line)
	}
}

// TestStoreOnFullFilesystem: the state directory on a small tmpfs that fills up. The
// block is refused (store_failed) with the kernel as it was; the failure
// is final — once space returns, writes are still refused until a restart;
// after the restart blocks succeed and what was acknowledged before is
// there.
func TestStoreOnFullFilesystem(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount a tmpfs")
	}
	mnt := filepath.Join(t.TempDir(), "fs")
	if err := os.Mkdir(mnt, 0o700); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", mnt).CombinedOutput(); err != nil {
		t.Skipf("cannot mount a tmpfs: %v: %s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", "-l", mnt).Run() })
	clk := &clock{t: t0}
	fw := newFakeFW()
	cfg := testConfig(t)
	cfg.StateDir = mnt // store, its journal and the audit log
	d := newTestDaemon(t, cfg, fw, clk)
	ctx := context.Background()
	if _, err := d.path.Enforce(ctx, response.Decision{Action: response.ActionBlock, Targets: pfx("203.0.113.7"), Until: t0.Add(time.Hour), Admin: true}); err != nil {
		t.Fatal(err)
	}
	before := fw.state()
	filler, err := os.Create(filepath.Join(mnt, "filler"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := filler.Write(make([]byte, 4<<20)); !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("filling the tmpfs: %v", err)
	}
	filler.Close()
	var targets []netip.Prefix
	for i := range 4000 {
		targets = append(targets, netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 18, byte(i >> 8), byte(i)}), 32))
	}
	block := func() error {
		_, err := d.path.Enforce(ctx, response.Decision{Action: response.ActionBlock, Targets: targets, Until: t0.Add(time.Hour)})
		return err
	}
	err = block()
	if api.CodeOf(err) != api.CodeStore || !strings.Contains(err.Error(), "no space left") {
		t.Fatalf("block on a full filesystem: want code %s (no space left), got %v", api.CodeStore, err)
	}
	if diff := cmp.Diff(before, fw.state()); diff != "" {
		t.Fatalf("kernel changed (-want +got):\n%s", diff)
	}
	os.Remove(filepath.Join(mnt, "filler")) // space returns
	if err := block(); api.CodeOf(err) != api.CodeStore || !strings.Contains(err.Error(), "until parryd restarts") {
		t.Fatalf("block after space returned, before a restart: want %s (refused until restart), got %v", api.CodeStore, err)
	}
	if diff := cmp.Diff(before, fw.state()); diff != "" {
		t.Fatalf("kernel changed (-want +got):\n%s", diff)
	}
	d.Close()

	d = newTestDaemon(t, cfg, fw, clk)
	if err := block(); err != nil {
		st, _ := os.Stat(filepath.Join(mnt, "store.db"))
		t.Fatalf("block after a restart (store.db %d bytes): %v", st.Size(), err)
	}
	var has bool
	for _, b := range blocksOf(t, d) {
		has = has || b.Target == "203.0.113.7"
	}
	if !has {
		t.Fatal("the block acknowledged before the failure is gone")
	}
	verifyAuditOK(t, cfg.StateDir)
}

// TestGroupKernelFailureFailsTheGroup: when the kernel refuses a group's
// transaction, every member fails and nothing of the group is left in the
// store or the kernel; a member refused by the guard keeps its own code.
func TestGroupKernelFailureFailsTheGroup(t *testing.T) {
	clk := &clock{t: t0}
	fw := newFakeFW()
	d := newTestDaemon(t, testConfig(t), fw, clk)
	dial := serve(t, d)
	hold, entered := make(chan struct{}), make(chan struct{}, 1)
	fw.mu.Lock()
	fw.hold, fw.entered = hold, entered
	fw.mu.Unlock()
	first := dial()
	fmt.Fprintf(first, `{"op":"block","id":"first","targets":["203.0.113.1"],"for":"1h"}`+"\n")
	<-entered
	fw.mu.Lock()
	fw.hold = nil
	fw.mu.Unlock()
	targets := []string{"203.0.113.2", "203.0.113.3", "127.0.0.1", "203.0.113.4"}
	conns := make([]*bufio.Reader, len(targets))
	for i, tg := range targets {
		c := dial()
		fmt.Fprintf(c, `{"op":"block","targets":["%s"],"for":"1h"}`+"\n", tg)
		conns[i] = bufio.NewReader(c)
		pollFor(t, "the block queued", func() bool { return d.path.Waiting() == i+1 })
	}
	fw.mu.Lock()
	fw.failIf = func(elems []firewall.Element) error { // the group's transaction, not the first's
		if slices.ContainsFunc(elems, func(e firewall.Element) bool { return e.Prefix.Addr().String() == "203.0.113.2" }) {
			return errors.New("injected")
		}
		return nil
	}
	fw.mu.Unlock()
	close(hold) // the first commit ends; the group's fails
	if w := readResp(t, bufio.NewReader(first)); !w.OK {
		t.Fatalf("first: %+v", w.Error)
	}
	var codes []string
	for i, r := range conns {
		w := readResp(t, r)
		code := "ok"
		if !w.OK {
			code = w.Error.Code
		}
		codes = append(codes, targets[i]+" "+code)
	}
	want := []string{"203.0.113.2 firewall_failed", "203.0.113.3 firewall_failed", "127.0.0.1 loopback", "203.0.113.4 firewall_failed"}
	if !cmp.Equal(codes, want) {
		t.Fatalf("answers %v, want %v: a group fails as a whole, the guard's refusal alone", codes, want)
	}
	if diff := cmp.Diff("block 203.0.113.1/32 timeout=1h0m0s", fw.state()); diff != "" {
		t.Errorf("kernel after a failed group (-want +got):\n%s", diff)
	}
	if n := len(blocksOf(t, d)); n != 1 {
		t.Errorf("store holds %d blocks after a failed group, want 1", n)
	}
	verifyAuditOK(t, d.Config().StateDir)
}
