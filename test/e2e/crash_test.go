package e2e

import (
	"bufio"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/parryhq/parry/test/daemon"
	"github.com/parryhq/parry/test/netns"
)

// crashTarget is one target of the crash harness and what is known of it:
// its last acknowledged state and whether a change was in flight (sent,
// not answered) when parryd died.
type crashTarget struct {
	addr     string
	blocked  bool // last acknowledged state
	inFlight bool // a change to !blocked was sent and not answered
}

// TestCrashHarness: clients block and unblock concurrently (pipelined and
// one at a time) while parryd is killed with SIGKILL at random moments,
// many rounds. After each kill, the kernel (left as the dead daemon left
// it) holds every acknowledged change; after each restart, the store
// (parry list) and the kernel agree with each other and with every
// acknowledged change, a change that was in flight is either wholly there
// or wholly not, and `parry audit verify` passes.
func TestCrashHarness(t *testing.T) {
	rounds := 50
	if testing.Short() {
		rounds = 10
	}
	ns := netns.New(t)
	d := newDaemon(t, ns)
	const clients, perClient = 4, 12
	targets := make([][]*crashTarget, clients)
	for c := range targets {
		for i := range perClient {
			targets[c] = append(targets[c], &crashTarget{addr: fmt.Sprintf("203.0.%d.%d", 100+c, 10+i)})
		}
	}
	rng := rand.New(rand.NewPCG(1, uint64(time.Now().UnixNano())))
	acked := 0
	for round := range rounds {
		d.Start()
		checkCrashState(t, round, "after restart", d, targets, true)
		var wg sync.WaitGroup
		var mu sync.Mutex
		for c := range clients {
			wg.Add(1)
			go func() {
				defer wg.Done()
				n := crashClient(d, targets[c], c%2 == 1, rand.New(rand.NewPCG(uint64(round), uint64(c))))
				mu.Lock()
				acked += n
				mu.Unlock()
			}()
		}
		// Let the clients get going, then kill at a random moment.
		time.Sleep(time.Duration(10+rng.IntN(100)) * time.Millisecond) // the random kill moment, not synchronisation
		d.Kill()
		wg.Wait()
		checkCrashState(t, round, "after kill -9 (kernel as left)", d, targets, false)
	}
	d.Start()
	checkCrashState(t, rounds, "final", d, targets, true)
	t.Logf("%d rounds, %d acknowledged changes", rounds, acked)
}

// crashClient toggles its targets until the connection breaks; pipelined
// sends up to 4 requests before reading their answers. It returns the
// number of acknowledged changes.
func crashClient(d *daemon.Daemon, ts []*crashTarget, pipelined bool, rng *rand.Rand) int {
	c, err := net.Dial("unix", d.Socket)
	if err != nil {
		return 0
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(20 * time.Second))
	r := bufio.NewReader(c)
	depth := 1
	if pipelined {
		depth = 4
	}
	n := 0
	for {
		// distinct targets in one pipelined burst: each has one change in flight
		perm := rng.Perm(len(ts))[:depth]
		var sb strings.Builder
		for i, k := range perm {
			x := ts[k]
			x.inFlight = true
			if x.blocked {
				fmt.Fprintf(&sb, `{"op":"unblock","id":%d,"targets":["%s"]}`+"\n", i, x.addr)
			} else {
				fmt.Fprintf(&sb, `{"op":"block","id":%d,"targets":["%s"],"for":"1h"}`+"\n", i, x.addr)
			}
		}
		if _, err := c.Write([]byte(sb.String())); err != nil {
			return n
		}
		for _, k := range perm {
			line, err := r.ReadBytes('\n')
			if err != nil {
				return n
			}
			var resp struct {
				OK bool `json:"ok"`
			}
			if json.Unmarshal(line, &resp) != nil || !resp.OK {
				return n // a refusal while dying (busy, shutting down): stays in flight
			}
			x := ts[k]
			x.blocked, x.inFlight = !x.blocked, false
			n++
		}
	}
}

// checkCrashState checks the kernel (and, with the daemon up, the store)
// against what was acknowledged. A target with a change in flight may be in
// either state; once the daemon is up again the store and the kernel must
// agree on it, and that state is the target's from then on.
func checkCrashState(t *testing.T, round int, when string, d *daemon.Daemon, targets [][]*crashTarget, up bool) {
	t.Helper()
	kernel := kernelElems(t, d.NS, d.Table)
	var store map[string]bool
	if up {
		// The sweep of elements the store does not know (a block whose
		// kernel write reached the kernel but whose commit did not reach
		// the disk) runs just after start: wait for it.
		store = listed(t, d)
		netns.Poll(10*time.Second, 5*time.Millisecond, func() bool {
			kernel = kernelElems(t, d.NS, d.Table)
			for _, ts := range targets {
				for _, x := range ts {
					if kernelCovers(kernel, x.addr) != store[x.addr] {
						return false
					}
				}
			}
			return true
		})
		if stdout, stderr, code := d.Parry("audit", "verify"); code != 0 {
			t.Fatalf("round %d %s: parry audit verify failed (%d): %s%s", round, when, code, stdout, stderr)
		}
	}
	for _, ts := range targets {
		for _, x := range ts {
			inKernel := kernelCovers(kernel, x.addr)
			if up && store[x.addr] != inKernel {
				t.Fatalf("round %d %s: %s: store has it %v, kernel %v: half-present", round, when, x.addr, store[x.addr], inKernel)
			}
			if x.inFlight {
				if up { // settled: the store and the kernel agree on it
					x.blocked, x.inFlight = inKernel, false
				}
				continue
			}
			if inKernel != x.blocked {
				t.Fatalf("round %d %s: %s: acknowledged blocked=%v, kernel has it %v", round, when, x.addr, x.blocked, inKernel)
			}
		}
	}
}

// listed is the store's blocks as parry list --json shows them.
func listed(t *testing.T, d *daemon.Daemon) map[string]bool {
	t.Helper()
	out := d.MustParry("list", "--json")
	var list struct {
		Blocks []struct {
			Target string `json:"target"`
		} `json:"blocks"`
	}
	if err := json.Unmarshal([]byte(out), &list); err != nil {
		t.Fatalf("parry list --json: %v", err)
	}
	store := map[string]bool{}
	for _, b := range list.Blocks {
		store[b.Target] = true
	}
	return store
}
