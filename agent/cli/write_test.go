package cli

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
	"regexp"
	"strconv"
	"strings"
	"testing"
)

func TestChunkRequests(t *testing.T) {
	var targets []string
	for i := range 100_000 {
		targets = append(targets, fmt.Sprintf("10.%d.%d.%d", i>>16, (i>>8)&255, i&255))
	}
	base := map[string]any{"op": "block", "for": "1d", "reason": "feed \"x\"", "partial": true}
	reqs, _, err := chunkRequests(base, targets, chunkBytes)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for i, r := range reqs {
		if len(r)+1 > 64<<10 {
			t.Fatalf("request %d is %d bytes with its newline: over the daemon's 64 KiB line limit", i, len(r)+1)
		}
		var req struct {
			Op      string   `json:"op"`
			For     string   `json:"for"`
			Reason  string   `json:"reason"`
			Partial bool     `json:"partial"`
			Targets []string `json:"targets"`
		}
		if err := json.Unmarshal(r, &req); err != nil {
			t.Fatalf("request %d is not JSON: %v", i, err)
		}
		if req.Op != "block" || req.For != "1d" || req.Reason != `feed "x"` || !req.Partial || len(req.Targets) == 0 {
			t.Fatalf("request %d: %+v", i, req)
		}
		got = append(got, req.Targets...)
	}
	if len(got) != len(targets) {
		t.Fatalf("%d targets in %d requests, want %d", len(got), len(reqs), len(targets))
	}
	for i := range got {
		if got[i] != targets[i] {
			t.Fatalf("target %d: %s, want %s", i, got[i], targets[i])
		}
	}
	if one, _, _ := chunkRequests(base, targets[:1], chunkBytes); len(one) != 1 {
		t.Fatalf("one target: %d requests", len(one))
	}
}

// fakeDaemon answers every request line on a Unix socket with answer.
func fakeDaemon(t *testing.T, answer string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "s.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				sc := bufio.NewScanner(c)
				for sc.Scan() {
					fmt.Fprintln(c, answer)
				}
			}()
		}
	}()
	return path
}

func TestUnblockHintsAtCoveringCIDR(t *testing.T) {
	sock := fakeDaemon(t, `{"ok":true,"count":1,"blocks":[{"target":"198.51.100.0/24","id":"x","created":"2026-11-27T00:00:00Z"}]}`)
	var out bytes.Buffer
	a := &App{Stdout: &out, Stderr: io.Discard, Getenv: func(string) string { return "" }, socket: sock}
	a.hintCovered([]string{"198.51.100.5", "203.0.113.7"})
	got := out.String()
	if !strings.Contains(got, "198.51.100.5 is inside the blocked 198.51.100.0/24") {
		t.Fatalf("no hint for an address inside a blocked CIDR: %q", got)
	}
	if strings.Contains(got, "203.0.113.7") {
		t.Fatalf("hint for an address no block covers: %q", got)
	}
}

func TestBlockUsageErrors(t *testing.T) {
	for _, args := range [][]string{
		{"block", "203.0.113.7", "--for", "0s"},
		{"block", "203.0.113.7", "--for", "-1h"},
		{"block", "203.0.113.7", "--for", "1y"},
		{"block", "203.0.113.7", "--for", "1h", "--permanent"},
		{"signal", "auth_failure", "--severity", "extreme"},
		{"signal", "auth_failure", "--ip", "bogus"},
	} {
		var stderr bytes.Buffer
		code := Main(context.Background(), append(args, "--socket", "/nonexistent/s.sock"), strings.NewReader(""), io.Discard, &stderr)
		if code != ExitUsage {
			t.Errorf("parry %v: exit %d, want %d (usage); stderr %q", args, code, ExitUsage, stderr.String())
		}
	}
}

func TestSkipInvalidSaysWhatItSkipped(t *testing.T) {
	var stderr bytes.Buffer
	a := &App{Stdin: strings.NewReader("203.0.113.7\nbogus\r\n# c\n\n198.51.100.0/24\r\n"), Stderr: &stderr}
	got, err := a.gatherTargets(nil, "-", true)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(got, " ") != "203.0.113.7/32 198.51.100.0/24" && strings.Join(got, " ") != "203.0.113.7 198.51.100.0/24" {
		t.Fatalf("targets = %v", got)
	}
	if !strings.Contains(stderr.String(), "skipped stdin:2") || !strings.Contains(stderr.String(), "skipped 1 invalid line") {
		t.Fatalf("stderr = %q, want the skipped line named and counted", stderr.String())
	}
}

func TestFileFormats(t *testing.T) {
	in := "\ufeff203.0.113.1\r\n198.51.100.0/24 ; SBL123\r\n; Spamhaus header\n# c\n\n  2001:db8::/48  # x\n"
	a := &App{Stdin: strings.NewReader(in), Stderr: io.Discard}
	got, err := a.gatherTargets(nil, "-", false)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 3 || got[1] != "198.51.100.0/24" || got[2] != "2001:db8::/48" {
		t.Fatalf("targets = %q", got)
	}
	long := "203.0.113.1\n" + strings.Repeat("x", 70000) + "\n"
	a = &App{Stdin: strings.NewReader(long), Stderr: io.Discard}
	if _, err := a.gatherTargets(nil, "-", false); err == nil || !strings.Contains(err.Error(), "stdin:2: line longer than 64 KiB") {
		t.Fatalf("oversized line: err = %v, want its line number", err)
	}
}

// parryd dies in the middle of a pipelined `parry block --file`: the CLI
// says how many chunks (and targets) were acknowledged, and fails.
func TestBlockFileSaysWhatWasAcknowledgedWhenConnectionBreaks(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		sc := bufio.NewScanner(c)
		sc.Buffer(nil, 1<<20)
		for n := 0; n < 2 && sc.Scan(); n++ { // two chunks answered, then gone
			fmt.Fprintln(c, `{"ok":true,"decision_id":"x","action":"block","added":1}`)
		}
	}()
	var file strings.Builder
	for i := range 20000 {
		fmt.Fprintf(&file, "10.%d.%d.%d\n", i>>16, (i>>8)&255, i&255)
	}
	list := filepath.Join(t.TempDir(), "list")
	if err := os.WriteFile(list, []byte(file.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	base := map[string]any{"op": "block", "permanent": true}
	targets, err := (&App{Stderr: io.Discard}).gatherTargets(nil, list, false)
	if err != nil {
		t.Fatal(err)
	}
	_, counts, _ := chunkRequests(base, targets, chunkBytes)
	if len(counts) < 3 {
		t.Fatalf("the list makes %d chunks; the test needs at least 3", len(counts))
	}
	var stderr bytes.Buffer
	code := Main(context.Background(), []string{"block", "--file", list, "--permanent", "--socket", path}, strings.NewReader(""), io.Discard, &stderr)
	if code == ExitOK {
		t.Fatal("exit 0 after the connection broke")
	}
	re := regexp.MustCompile(`2 of (\d+) chunks \((\d+) targets\) were acknowledged before the connection to parryd broke; the rest may or may not have been applied — check ` + "`parry list`")
	m := re.FindStringSubmatch(stderr.String())
	if m == nil {
		t.Fatalf("stderr = %q\nwant it to say how many chunks were acknowledged", stderr.String())
	}
	// Two chunks of about 60 KiB each, out of all of them.
	if k, _ := strconv.Atoi(m[2]); m[1] != strconv.Itoa(len(counts)) || k < counts[0] || k >= len(targets) {
		t.Fatalf("%q: want 2 of %d chunks, about %d targets", m[0], len(counts), counts[0]+counts[1])
	}
}
