package e2e

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/parryhq/parry/agent/api"
	"github.com/parryhq/parry/test/daemon"
	"github.com/parryhq/parry/test/netns"
	"github.com/parryhq/parry/test/sshlab"
)

// sshdFileConfig is parryd reading the lab's sshd log with the sshd
// detector (the journal off: the lab's sshd logs to its file).
func sshdFileConfig(path string) string {
	return quietConfig + fmt.Sprintf("sources:\n  journal:\n    enabled: false\n  files:\n    - name: lab-sshd\n      path: %s\n      detectors: [sshd]\n", path)
}

// handledTo is the offset up to which the one file source has handled its file.
func handledTo(t testing.TB, d *daemon.Daemon) int64 {
	var pos struct {
		File struct {
			Offset int64 `json:"offset"`
		} `json:"file"`
	}
	if p := sourceStatus(t, d).Position; len(p) > 0 {
		if err := json.Unmarshal(p, &pos); err != nil {
			t.Fatal(err)
		}
	}
	return pos.File.Offset
}

func sourceStatus(t testing.TB, d *daemon.Daemon) api.SourceStatus {
	t.Helper()
	var st api.SourcesStatus
	if err := json.Unmarshal([]byte(d.MustParry("source", "status", "--json")), &st); err != nil {
		t.Fatal(err)
	}
	if len(st.Sources) != 1 {
		t.Fatalf("source status: %+v, want one source", st)
	}
	return st.Sources[0]
}

// TestSSHBruteForceDropped: a real sshd in the host namespace logs to a
// file parryd reads; five failed password logins from the peer (real ssh
// through sshpass) get the peer dropped, at the fifth and not before,
// while a second peer address still logs in. With restart, parryd is
// restarted between the third and the fourth failure: the block still
// comes at exactly the fifth (the three are read back and counted, none
// twice, none lost).
func TestSSHBruteForceDropped(t *testing.T) {
	for _, restart := range []bool{false, true} {
		t.Run(fmt.Sprintf("restart=%v", restart), func(t *testing.T) { testSSHBruteForce(t, restart) })
	}
}

func testSSHBruteForce(t *testing.T, restart bool) {
	netns.RequireRoot(t)
	sshlab.Require(t)
	pair := netns.NewPair(t)
	logPath := filepath.Join(t.TempDir(), "sshd.log")
	lab := sshlab.Start(t, sshlab.Config{Pair: pair, LogPath: logPath})
	second := netip.MustParseAddr("192.0.2.3")
	lab.AddPeerAddress(t, netip.PrefixFrom(second, 24))
	d := daemon.New(t, pair.Host, daemon.Options{Config: sshdFileConfig(logPath), Args: []string{"--table", "parry"}})
	d.Start()
	netns.Eventually(t, 10*time.Second, "the file source open", func() bool { return sourceStatus(t, d).Available })

	peer := pair.PeerV4.String()
	for i := 1; i <= 5; i++ {
		if restart && i == 4 {
			d.Stop()
			d.Start()
		}
		if err := lab.Peer().FailPassword("root"); err != nil {
			t.Fatalf("failure %d: %v", i, err)
		}
		if _, err := lab.WaitLines("Failed password for root from "+peer+" port ", i, 30*time.Second); err != nil {
			t.Fatal(err)
		}
		if i < 5 {
			// Everything sshd logged so far is handled before looking.
			netns.Eventually(t, 10*time.Second, "parryd read the log to its end", func() bool {
				return handledTo(t, d) == fileSize(logPath)
			})
			if _, ok := kernelElems(t, pair.Host, "parry")[peer]; ok {
				t.Fatalf("the peer is blocked after %d failures", i)
			}
		}
	}
	netns.Eventually(t, 10*time.Second, "the peer in the kernel's block set", func() bool {
		_, ok := kernelElems(t, pair.Host, "parry")[peer]
		return ok
	})
	if pair.Peer.CanConnect(pair.HostV4, 22) {
		t.Error("the blocked peer still connects to port 22")
	}
	if err := lab.Peer().From(second).KeyLogin(); err != nil {
		t.Errorf("the second peer address cannot log in: %v", err)
	}
	list := d.MustParry("list")
	if !strings.Contains(list, "sshd@lab-sshd") || !strings.Contains(list, "sshd: 5 auth_failure signals for ip "+peer) {
		t.Errorf("parry list does not say which detector and source:\n%s", list)
	}
	if rep := d.MustParry("report", "--format", "json", "--since", "1h"); !strings.Contains(rep, "sshd@lab-sshd") {
		t.Errorf("parry report does not name the detector and source:\n%s", rep)
	}
	st := sourceStatus(t, d)
	if st.Decisions != 1 {
		t.Errorf("source status: %d decisions, want 1: %+v", st.Decisions, st)
	}
	if restart && st.Replayed == 0 {
		t.Errorf("source status after the restart: nothing read back: %+v", st)
	}
}

// TestSourceUnavailable: a journal without journalctl and a file in a
// directory that does not exist are reported unavailable, with why, in
// parry source status and parry status; parryd runs on, and the file
// source reads the file once it appears.
func TestSourceUnavailable(t *testing.T) {
	netns.RequireRoot(t)
	ns := netns.New(t)
	dir := filepath.Join(t.TempDir(), "later")
	logPath := filepath.Join(dir, "auth.log")
	cfg := quietConfig + "sources:\n  journal:\n    journalctl: parry-no-such-journalctl\n  files:\n    - path: " + logPath + "\n      detectors: [sshd]\n"
	d := daemon.New(t, ns, daemon.Options{Config: cfg})
	d.Start()
	var st api.SourcesStatus
	netns.Eventually(t, 10*time.Second, "both sources reported unavailable with an error", func() bool {
		if err := json.Unmarshal([]byte(d.MustParry("source", "status", "--json")), &st); err != nil {
			t.Fatal(err)
		}
		return len(st.Sources) == 2 && !st.Sources[0].Available && st.Sources[0].Error != "" && !st.Sources[1].Available && st.Sources[1].Error != ""
	})
	status := d.MustParry("status")
	for _, want := range []string{"WARNING: source journal unavailable (retrying): ", "WARNING: source " + logPath + " unavailable (retrying): "} {
		if !strings.Contains(status, want) {
			t.Errorf("parry status lacks %q:\n%s", want, status)
		}
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(logPath, []byte("Failed password for root from 203.0.113.9 port 5555 ssh2\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	netns.Eventually(t, 10*time.Second, "the file read once it appears", func() bool {
		if err := json.Unmarshal([]byte(d.MustParry("source", "status", "--json")), &st); err != nil {
			t.Fatal(err)
		}
		return st.Sources[1].Available && st.Sources[1].Matched == 1
	})
	if !d.Alive() {
		t.Fatal("parryd exited")
	}
}

// TestFileSourceRotation: parryd follows a log that is rotated (rename and
// create, as logrotate does) while lines are written: 20 addresses with 5
// failures each, interleaved, the rotation after the 50th line; every
// line is counted once (100 matched), and exactly the 20 addresses are
// blocked.
func TestFileSourceRotation(t *testing.T) {
	netns.RequireRoot(t)
	ns := netns.New(t)
	logPath := filepath.Join(t.TempDir(), "auth.log")
	if err := os.WriteFile(logPath, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	d := daemon.New(t, ns, daemon.Options{Config: sshdFileConfig(logPath)})
	d.Start()
	netns.Eventually(t, 10*time.Second, "the file source open", func() bool { return sourceStatus(t, d).Available })
	f, err := os.OpenFile(logPath, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for round := range 5 {
		for a := range 20 {
			fmt.Fprintf(f, "Failed password for u%d from 203.0.113.%d port %d ssh2\n", a, 10+a, 40000+round) // a user each: no auth-failure-user notify
			if n++; n == 50 {
				f.Close()
				if err := os.Rename(logPath, logPath+".1"); err != nil {
					t.Fatal(err)
				}
				if f, err = os.OpenFile(logPath, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	f.Close()
	netns.Eventually(t, 20*time.Second, "100 lines matched", func() bool { return sourceStatus(t, d).Matched >= 100 })
	netns.Eventually(t, 10*time.Second, "20 blocked addresses in the kernel", func() bool {
		return kernelCovered(kernelElems(t, ns, "parry")) == 20 // neighbours blocked until the same time merge in the union
	})
	st := sourceStatus(t, d)
	if st.Matched != 100 || st.Decisions != 20 || st.Rotations != 1 {
		t.Errorf("source status: matched %d, decisions %d, rotations %d; want 100, 20, 1", st.Matched, st.Decisions, st.Rotations)
	}
}
