package evidence

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/parryhq/parry/test/netns"
)

const helperEnv = "PARRY_EVIDENCE_HELPER_DIR"

type helperOut struct {
	Record Record       `json:"record"`
	Conns  []Connection `json:"conns"`
}

// TestCaptureHelper is not a test: it is the capture process that
// TestCaptureInNamespace runs inside the namespace (a process sees the
// sockets of its own network namespace only).
func TestCaptureHelper(t *testing.T) {
	dir := os.Getenv(helperEnv)
	if dir == "" {
		t.Skip("helper process for TestCaptureInNamespace")
	}
	c := NewCollector(Config{}, nil)
	s, err := c.Capture(context.Background(), "netns test", "test")
	if err != nil {
		t.Fatal(err)
	}
	st, err := OpenStore(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	rec, err := st.Save(s)
	if err != nil {
		t.Fatal(err)
	}
	conns, err := c.ConnectionsOf(context.Background(), []netip.Prefix{netip.MustParsePrefix("192.0.2.2/32")})
	if err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(helperOut{rec, conns})
	fmt.Printf("HELPER %s\n", b)
}

// TestCaptureInNamespace: a real process (socat) listens in a test
// namespace, a peer namespace holds a real TCP connection to it, and a
// capture run inside the namespace sees both with their owning process;
// the file is 0400 and its hash is what Save returned.
func TestCaptureInNamespace(t *testing.T) {
	p := netns.NewPair(t)
	p.HoldConnection(t, 8080)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	dir := t.TempDir()
	cmd := p.Host.Command(ctx, os.Args[0], "-test.run=^TestCaptureHelper$", "-test.v")
	cmd.Env = append(os.Environ(), helperEnv+"="+dir)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("helper: %v\n%s", err, out)
	}
	var res helperOut
	for line := range strings.Lines(string(out)) {
		if j, ok := strings.CutPrefix(line, "HELPER "); ok {
			if err := json.Unmarshal([]byte(j), &res); err != nil {
				t.Fatal(err)
			}
		}
	}
	if res.Record.ID == "" {
		t.Fatalf("no helper output:\n%s", out)
	}

	// The file: 0400, hash as recorded.
	fi, err := os.Stat(res.Record.Path)
	if err != nil || fi.Mode().Perm() != 0o400 {
		t.Fatalf("evidence file %s: %v, mode %v", res.Record.Path, err, fi.Mode())
	}
	data, _ := os.ReadFile(res.Record.Path)
	sum := sha256.Sum256(data)
	if hex.EncodeToString(sum[:]) != res.Record.SHA256 {
		t.Errorf("file hash differs from the recorded %s", res.Record.SHA256)
	}
	var s Snapshot
	if err := json.Unmarshal(data, &s); err != nil {
		t.Fatal(err)
	}

	listenAddr := netip.MustParseAddrPort("0.0.0.0:8080")
	li := slices.IndexFunc(s.Listening, func(c Connection) bool { return c.Local == listenAddr })
	if li < 0 || s.Listening[li].Name != "socat" {
		t.Fatalf("listener 0.0.0.0:8080 by socat not in %+v", s.Listening)
	}
	ci := slices.IndexFunc(s.Connections, func(c Connection) bool {
		return c.Local == netip.MustParseAddrPort("192.0.2.1:8080") && c.Remote.Addr() == p.PeerV4 && c.State == "ESTABLISHED"
	})
	if ci < 0 {
		t.Fatalf("connection from %v not in %+v", p.PeerV4, s.Connections)
	}
	conn := s.Connections[ci]
	pi := slices.IndexFunc(s.Processes, func(pr Process) bool { return pr.PID == conn.PID })
	if conn.Name != "socat" || pi < 0 || !slices.Contains(s.Processes[pi].Cmdline, "TCP4-LISTEN:8080,fork,reuseaddr") {
		t.Errorf("owner of the connection: %+v (process %d found: %v)", conn, conn.PID, pi >= 0)
	}
	// Only the namespace's sockets: nothing of the machine's own network.
	for _, c := range append(slices.Clone(s.Connections), s.Listening...) {
		a := c.Local.Addr()
		if !a.IsLoopback() && !a.IsUnspecified() && a != p.HostV4 && a != p.HostV6 && !a.IsLinkLocalUnicast() {
			t.Errorf("socket from outside the namespace: %+v", c)
		}
	}
	// ConnectionsOf the peer, as a block would record it.
	if len(res.Conns) != 1 || res.Conns[0].Remote != conn.Remote || res.Conns[0].Name != "socat" {
		t.Errorf("ConnectionsOf(192.0.2.2) = %+v, want the one socat connection", res.Conns)
	}
}
