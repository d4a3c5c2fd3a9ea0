package report

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden")

// chain writes lines in the agent's audit format, hash-chained.
type chain struct {
	buf  bytes.Buffer
	seq  uint64
	prev string
}

func (c *chain) add(t *testing.T, at string, event string, fields map[string]any) {
	t.Helper()
	if c.prev == "" {
		c.prev = strings.Repeat("0", 64)
	}
	c.seq++
	tm, err := time.Parse(time.RFC3339, at)
	if err != nil {
		t.Fatal(err)
	}
	body, err := json.Marshal(struct {
		Seq    uint64         `json:"seq"`
		Time   string         `json:"time"`
		Event  string         `json:"event"`
		Fields map[string]any `json:"fields,omitempty"`
		Prev   string         `json:"prev"`
	}{c.seq, tm.Format(time.RFC3339Nano), event, fields, c.prev})
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(body)
	c.prev = hex.EncodeToString(sum[:])
	c.buf.Write(body[:len(body)-1])
	c.buf.WriteString(`,"hash":"` + c.prev + "\"}\n")
}

// scriptedDay is one day on a web server: a brute-force attempt blocked by
// policy, a scanner's /24 blocked by hand, a refused loopback block, a
// critical integrity finding that locks the host down (with evidence), the
// lockdown released, the table flushed by someone and re-asserted.
func scriptedDay(t *testing.T) []byte {
	var c chain
	c.add(t, "2026-03-09T23:00:00Z", "block", map[string]any{"id": "old", "action": "block", "targets": []string{"192.0.2.99"}})
	c.add(t, "2026-03-10T00:00:00Z", "start", map[string]any{"version": "0.1.0", "pid": 812, "blocks": 0})
	for i := range 5 {
		c.add(t, "2026-03-10T02:14:0"+string(rune('0'+i))+"Z", "signal", map[string]any{"kind": "auth_failure", "ip": "203.0.113.7",
			"user": "admin", "source": "webapp", "sender": "www-data", "result": "accepted",
			"attrs": map[string]string{"country": "NL", "asn": "64500"}})
	}
	c.add(t, "2026-03-10T02:14:05Z", "block", map[string]any{"id": "d-ssh", "action": "block", "targets": []string{"203.0.113.7"},
		"until": "2026-03-10T03:14:05Z", "reason": "5 auth_failure in 60s", "source": "policy", "rule": "auth-bruteforce", "added": 1})
	c.add(t, "2026-03-10T02:14:06Z", "block_connections", map[string]any{"decision": "d-ssh", "targets": []string{"203.0.113.7"},
		"connections": []map[string]any{{"proto": "tcp", "local": "192.0.2.1:443", "remote": "203.0.113.7:50122", "pid": 901, "name": "nginx"},
			{"proto": "tcp", "local": "192.0.2.1:22", "remote": "203.0.113.7:50130", "pid": 455, "name": "sshd"}}})
	c.add(t, "2026-03-10T03:14:05Z", "expire", map[string]any{"targets": []string{"203.0.113.7"}, "count": 1})
	// The agent audits signals in batches: one "signals" event for several.
	var batch []map[string]any
	for i := range 3 {
		batch = append(batch, map[string]any{"kind": "port_scan", "ip": "198.51.100." + string(rune('1'+i)),
			"source": "fail2ban", "sender": "uid=0(root) pid=" + string(rune('7'+i)), "outcome": "decided",
			"attrs": map[string]string{"detector": "nftables-scan", "country": "US"}})
	}
	c.add(t, "2026-03-10T09:00:02Z", "signals", map[string]any{"count": 3, "signals": batch})
	c.add(t, "2026-03-10T09:01:00Z", "block", map[string]any{"id": "d-scan", "action": "block", "targets": []string{"198.51.100.0/24"},
		"until": "permanent", "reason": "scanner network | ticket #42", "source": "cli", "sender": "uid=0(root)", "added": 1})
	c.add(t, "2026-03-10T10:30:00Z", "refuse", map[string]any{"id": "d-lo", "action": "block", "targets": []string{"127.0.0.1"},
		"source": "cli", "sender": "uid=1000(alice)", "code": "guarded", "error": "127.0.0.1 is loopback: never blocked"})
	c.add(t, "2026-03-10T11:00:00Z", "integrity_finding", map[string]any{"kind": "modified", "path": "/usr/bin/sudo",
		"severity": "critical", "detail": "sha256 changed; not from a package upgrade", "rule": "system-binaries"})
	c.add(t, "2026-03-10T11:00:00Z", "signal", map[string]any{"kind": "integrity_violation", "path": "/usr/bin/sudo", "severity": "critical",
		"detail": "sha256 changed; not from a package upgrade", "source": "integrity", "result": "accepted"})
	c.add(t, "2026-03-10T11:00:01Z", "lockdown", map[string]any{"id": "d-lock", "action": "lockdown", "until": "2026-03-10T12:00:01Z",
		"reason": "critical integrity finding", "source": "integrity", "isolate": true, "allow": []string{"192.0.2.10"}})
	c.add(t, "2026-03-10T11:00:03Z", "evidence", map[string]any{"id": "20260310T110001Z-1a2b3c4d", "trigger": "lockdown",
		"reason": "lockdown d-lock: critical integrity finding", "sha256": strings.Repeat("ab", 32), "size": 48213})
	c.add(t, "2026-03-10T11:45:00Z", "release", map[string]any{"id": "d-rel", "action": "release", "source": "cli", "sender": "uid=0(root)",
		"reason": "sudo restored from package", "was_active": true})
	c.add(t, "2026-03-10T14:00:00Z", "unblock", map[string]any{"id": "d-un", "action": "unblock", "targets": []string{"198.51.100.0/24"},
		"source": "cli", "sender": "uid=0(root)", "reason": "false positive: partner's scanner", "removed": 1})
	c.add(t, "2026-03-10T15:00:00Z", "reconcile", map[string]any{"reason": "table missing", "table_was_present": false, "restored": 0})
	c.add(t, "2026-03-10T16:00:00Z", "evidence", map[string]any{"id": "20260310T160000Z-5e6f7a8b", "trigger": "cli",
		"reason": "handover to security team", "sha256": strings.Repeat("cd", 32), "size": 51002})
	c.buf.WriteString("this is not an audit line\n")
	return c.buf.Bytes()
}

var (
	dayFrom = time.Date(2026, 3, 10, 0, 0, 0, 0, time.UTC)
	dayTo   = dayFrom.Add(24 * time.Hour)
)

func TestGoldenDay(t *testing.T) {
	lines, err := Read(bytes.NewReader(scriptedDay(t)), dayFrom, dayTo)
	if err != nil {
		t.Fatal(err)
	}
	if lines.Malformed != 1 || lines.Before != 1 {
		t.Errorf("malformed %d before %d, want 1 and 1", lines.Malformed, lines.Before)
	}
	rep := Build(lines, Chain{Checked: true, OK: true, Lines: 22}, "web1", dayFrom, dayTo)
	// The JSON is the report op's answer; agent/cli/reportfmt renders
	// this file as text and Markdown and compares with its own goldens.
	var out bytes.Buffer
	enc := json.NewEncoder(&out)
	enc.SetIndent("", "  ")
	if err := enc.Encode(rep); err != nil {
		t.Fatal(err)
	}
	golden := filepath.Join("testdata", "day.json.golden")
	if *update {
		if err := os.WriteFile(golden, out.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if d := cmp.Diff(string(want), out.String()); d != "" {
		t.Errorf("differs from %s (-want +got; go test -update rewrites it):\n%s", golden, d)
	}
}

func TestSummaryFacts(t *testing.T) {
	lines, _ := Read(bytes.NewReader(scriptedDay(t)), dayFrom, dayTo)
	r := Build(lines, Chain{}, "web1", dayFrom, dayTo)
	want := Totals{Blocks: 2, Targets: 2, Unblocks: 1, Expired: 1, Refused: 1, Lockdowns: 1, Releases: 1, Signals: 9,
		Findings: 1, Evidence: 2, Reconciles: 1, TableHealed: 1}
	if d := cmp.Diff(want, r.Totals); d != "" {
		t.Errorf("totals (-want +got):\n%s", d)
	}
	if r.Sources[0] != (Source{Addr: "203.0.113.7", Signals: 5, Blocks: 1, Country: "NL", ASN: "AS64500"}) {
		t.Errorf("top source %+v", r.Sources[0])
	}
	if r.Blocks[0].Conns != 2 {
		t.Errorf("block connections %d, want 2", r.Blocks[0].Conns)
	}
	if r.ByKind[0] != (Count{Key: "auth_failure", N: 5}) || r.BySender[0] != (Count{Key: "www-data", N: 5}) {
		t.Errorf("by kind %v by sender %v", r.ByKind, r.BySender)
	}
}

func TestReadSkipsOversizedLines(t *testing.T) {
	var in bytes.Buffer
	in.WriteString(`{"seq":1,"time":"2026-03-10T01:00:00Z","event":"block","fields":{"targets":["192.0.2.5"]}}` + "\n")
	in.WriteString(`{"seq":2,"time":"2026-03-10T01:00:00Z","event":"block","fields":{"reason":"` + strings.Repeat("x", MaxLine) + "\"}}\n")
	in.WriteString(`{"seq":3,"time":"2026-03-10T02:00:00Z","event":"unblock","fields":{"targets":["192.0.2.5"]}}`) // no final newline
	got, err := Read(&in, time.Time{}, time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Lines) != 2 || got.Malformed != 1 || got.Lines[1].Event != "unblock" {
		t.Errorf("lines %d malformed %d: %+v", len(got.Lines), got.Malformed, got.Lines)
	}
}

func TestSeries(t *testing.T) {
	lines, _ := Read(bytes.NewReader(scriptedDay(t)), dayFrom, dayTo)
	r := Build(lines, Chain{}, "web1", dayFrom, dayTo)
	s := r.Series
	if s == nil || !s.Start.Equal(dayFrom) || s.Step != 15*60 || len(s.Signals) != 96 {
		t.Fatalf("series %+v, want 96 steps of 15m from %s", s, dayFrom)
	}
	// 02:14 is step 8 (5 signals, 1 block), 09:00 step 36 (3 signals),
	// 10:30 step 42 (a refusal), 11:00 step 44 (a finding and its signal).
	for _, c := range []struct {
		name string
		v    []int
		i, n int
	}{{"signals", s.Signals, 8, 5}, {"blocks", s.Blocks, 8, 1}, {"signals", s.Signals, 36, 3}, {"blocks", s.Blocks, 36, 1},
		{"refused", s.Refused, 42, 1}, {"findings", s.Findings, 44, 1}, {"signals", s.Signals, 44, 1}} {
		if c.v[c.i] != c.n {
			t.Errorf("%s[%d] = %d, want %d", c.name, c.i, c.v[c.i], c.n)
		}
	}
	sum := func(v []int) (n int) {
		for _, x := range v {
			n += x
		}
		return n
	}
	if sum(s.Signals) != r.Totals.Signals || sum(s.Blocks) != r.Totals.Blocks || sum(s.Findings) != r.Totals.Findings {
		t.Errorf("series sums %d %d %d differ from totals %+v", sum(s.Signals), sum(s.Blocks), sum(s.Findings), r.Totals)
	}
	if r.Sources[0].Country != "NL" || r.Sources[0].ASN != "AS64500" {
		t.Errorf("top source %+v, want country NL and AS64500", r.Sources[0])
	}
	if r := Build(Lines{}, Chain{}, "h", time.Time{}, time.Time{}); r.Series != nil {
		t.Errorf("open window has series %+v", r.Series)
	}
	// A window of a year is still at most a bounded number of steps.
	if r := Build(Lines{}, Chain{}, "h", dayFrom.AddDate(-1, 0, 0), dayTo); len(r.Series.Blocks) > MaxSteps {
		t.Errorf("a year in %d steps of %ds", len(r.Series.Blocks), r.Series.Step)
	}
}

// TestCountKeysBounded: signals with a fresh kind, country and detector
// each keep the count tables at MaxKeys keys, the rest as "other".
func TestCountKeysBounded(t *testing.T) {
	var in bytes.Buffer
	for i := range MaxKeys + 100 {
		fmt.Fprintf(&in, `{"seq":%d,"time":"2026-03-10T01:00:00Z","event":"signal","fields":{"kind":"k%d","detector":"d%d","country":"c%d"}}`+"\n", i+1, i, i, i)
	}
	b := newBuilder(Chain{}, "h", dayFrom, dayTo)
	if _, err := Scan(&in, dayFrom, dayTo, func(l Line) { b.add(l, l.fields) }); err != nil {
		t.Fatal(err)
	}
	for name, m := range map[string]map[string]int{"kinds": b.kinds, "detectors": b.detectors, "countries": b.countries} {
		if len(m) != MaxKeys+1 || m["other"] != 100 {
			t.Errorf("%s: %d keys, other=%d; want %d and 100", name, len(m), m["other"], MaxKeys+1)
		}
	}
}
