package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/parryhq/parry/test/netns"
	"github.com/parryhq/parry/test/parrybin"
)

// kill -9 of parryd during a large `parry block --file`: after a restart,
// every stored block has a block line in the audit log (recovered if the
// crash came between the store commit and the audit write), the chain
// verifies, and the CLI said how many chunks were acknowledged.
func TestKill9DuringBlockFileKeepsStoreAndAuditInAgreement(t *testing.T) {
	p := netns.NewPair(t)
	d := newDaemon(t, p.Host)
	var list bytes.Buffer
	for i := range 100000 {
		fmt.Fprintf(&list, "10.%d.%d.%d\n", 1+i>>16, (i>>8)&255, i&255)
	}
	file := filepath.Join(t.TempDir(), "ips.txt")
	if err := os.WriteFile(file, list.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	_, parry := parrybin.Build(t)
	ackRe := regexp.MustCompile(`\d+ of \d+ chunks \(\d+ targets?\) were acknowledged before the connection to parryd broke`)
	// At least 3 rounds, and more (at most 8) until one has broken the
	// connection mid-file: with group commit a round can finish the whole
	// file before the kill lands.
	broken := 0
	for round := 0; round < 8 && (round < 3 || broken == 0); round++ {
		d.Start()
		if round > 0 {
			d.MustParry("unblock", "--file", file)
		}
		auditLog := d.AuditPath()
		before := fileSize(auditLog)
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		cmd := exec.CommandContext(ctx, parry, "--socket", d.Socket, "block", "--file", file, "--for", "1h")
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		// Kill parryd once the first chunks are recorded. (Not by the log's
		// growth alone: the sweep after a start may audit a long list of
		// kernel elements a killed group left without its commit.)
		netns.Eventually(t, 30*time.Second, "first block chunks in the audit log", func() bool {
			return blockLinesAfter(auditLog, before) >= 2
		})
		d.Kill()
		err := cmd.Wait()
		cancel()
		if err == nil {
			t.Logf("round %d: the whole file was acknowledged before the kill", round)
		} else {
			if !ackRe.MatchString(stderr.String()) {
				t.Fatalf("round %d: the CLI did not say what was acknowledged: %q", round, stderr.String())
			}
			broken++
		}
		d.Start()
		var l struct {
			Blocks []struct {
				Target string `json:"target"`
			} `json:"blocks"`
		}
		if err := json.Unmarshal([]byte(d.MustParry("list", "--json")), &l); err != nil {
			t.Fatal(err)
		}
		audited := auditedBlocks(t, auditLog)
		for _, b := range l.Blocks {
			if !audited[b.Target] {
				t.Fatalf("round %d: %s is blocked in the store with no block line in the audit log (%d blocks)", round, b.Target, len(l.Blocks))
			}
		}
		if out := d.MustParry("audit", "verify"); !strings.Contains(out, "ok") {
			t.Fatalf("round %d: audit verify: %s", round, out)
		}
		d.Kill()
	}
	if broken == 0 {
		t.Fatal("no round broke the connection mid-way; the test proves nothing")
	}
}

// blockLinesAfter counts the CLI's block lines in the log after offset.
func blockLinesAfter(path string, offset int64) int {
	b, err := os.ReadFile(path)
	if err != nil || int64(len(b)) < offset {
		return 0
	}
	return bytes.Count(b[offset:], []byte(`"event":"block"`))
}

func fileSize(path string) int64 {
	st, err := os.Stat(path)
	if err != nil {
		return 0
	}
	return st.Size()
}

// auditedBlocks are the targets of the log's block lines after the last
// unblock of each.
func auditedBlocks(t *testing.T, path string) map[string]bool {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out := map[string]bool{}
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 4<<20)
	for sc.Scan() {
		var line struct {
			Event  string `json:"event"`
			Fields struct {
				Targets []string `json:"targets"`
			} `json:"fields"`
		}
		if err := json.Unmarshal(sc.Bytes(), &line); err != nil {
			t.Fatalf("audit line: %v", err)
		}
		for _, tg := range line.Fields.Targets {
			switch line.Event {
			case "block":
				out[tg] = true
			case "unblock":
				delete(out, tg)
			}
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}
