// Package e2e runs parryd and parry as real processes: the daemon inside a
// throwaway network namespace (its own nftables), the CLI talking to it over
// the control socket, and real packets from a peer namespace.
package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/parryhq/parry/test/netns"
	"github.com/parryhq/parry/test/parrybin"
)

func TestMain(m *testing.M) {
	code := m.Run()
	parrybin.Remove()
	os.Exit(code)
}

// daemon is one parryd process inside a namespace.
type daemon struct {
	t     testing.TB
	ns    *netns.NS
	dir   string // state dir
	sock  string
	table string
	extra []string
	cmd   *exec.Cmd
	logs  *parrybin.Buffer
	done  chan struct{}
}

// quietConfig turns off the parts the core tests do not exercise.
const quietConfig = "integrity:\n  enabled: false\n"

// newDaemon prepares (does not start) a parryd in ns with its own state dir.
func newDaemon(t testing.TB, ns *netns.NS, extra ...string) *daemon {
	dir := t.TempDir()
	if !slices.Contains(extra, "--config") {
		// The core tests do not need the integrity watcher, whose first
		// start hashes the host's system files (CPU and I/O that would
		// skew the benchmarks and slow every test).
		cfg := filepath.Join(dir, "parry.yaml")
		if err := os.WriteFile(cfg, []byte(quietConfig), 0o600); err != nil {
			t.Fatal(err)
		}
		extra = append([]string{"--config", cfg}, extra...)
	}
	return &daemon{t: t, ns: ns, dir: dir, sock: filepath.Join(dir, "parry.sock"), table: "parry", extra: extra}
}

// start runs parryd and waits until it answers status.
func (d *daemon) start() {
	d.t.Helper()
	parryd, _ := parrybin.Build(d.t)
	args := append([]string{"--state-dir", d.dir, "--socket", d.sock, "--table", d.table}, d.extra...)
	d.logs = &parrybin.Buffer{}
	d.cmd = d.ns.Command(context.Background(), parryd, args...)
	d.cmd.Stdout, d.cmd.Stderr = d.logs, d.logs
	if err := d.cmd.Start(); err != nil {
		d.t.Fatalf("start parryd: %v", err)
	}
	d.done = make(chan struct{})
	go func() { _ = d.cmd.Wait(); close(d.done) }()
	cmd := d.cmd
	done := d.done
	d.t.Cleanup(func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Signal(syscall.SIGKILL)
			<-done
		}
		if d.t.Failed() {
			d.t.Logf("parryd log:\n%s", d.logs.String())
		}
	})
	netns.Eventually(d.t, 10*time.Second, "parryd answers status", func() bool {
		select {
		case <-d.done:
			d.t.Fatalf("parryd exited during start:\n%s", d.logs.String())
		default:
		}
		_, _, code := d.parry("status")
		return code == 0
	})
}

// stop sends SIGTERM and waits for a clean exit.
func (d *daemon) stop() {
	d.t.Helper()
	_ = d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.done:
	case <-time.After(10 * time.Second):
		d.t.Fatal("parryd did not stop within 10s of SIGTERM")
	}
	if code := d.cmd.ProcessState.ExitCode(); code != 0 {
		d.t.Fatalf("parryd exited %d after SIGTERM:\n%s", code, d.logs.String())
	}
}

// kill sends SIGKILL and waits.
func (d *daemon) kill() {
	d.t.Helper()
	_ = d.cmd.Process.Signal(syscall.SIGKILL)
	<-d.done
}

func (d *daemon) alive() bool {
	select {
	case <-d.done:
		return false
	default:
		return true
	}
}

// parry runs the CLI against this daemon.
func (d *daemon) parry(args ...string) (stdout, stderr string, code int) {
	return d.parryIn(nil, args...)
}

func (d *daemon) parryIn(stdin []byte, args ...string) (stdout, stderr string, code int) {
	_, parry := parrybin.Build(d.t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, parry, append([]string{"--socket", d.sock}, args...)...)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		code = ee.ExitCode()
	case err != nil:
		d.t.Fatalf("run parry: %v", err)
	}
	return o.String(), e.String(), code
}

// mustParry runs the CLI and fails the test unless it exits 0.
func (d *daemon) mustParry(args ...string) string {
	d.t.Helper()
	out, errOut, code := d.parry(args...)
	if code != 0 {
		d.t.Fatalf("parry %s: exit %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), code, out, errOut)
	}
	return out
}

// kernelElems reads our block sets from the kernel with the nft CLI (the
// oracle): target -> seconds left (-1: no timeout).
func kernelElems(t testing.TB, ns *netns.NS, table string) map[string]int {
	t.Helper()
	out := map[string]int{}
	for _, set := range []string{"block4", "block6", "block4net", "block6net"} {
		js, err := ns.Run("nft", "-j", "list", "set", "inet", table, set)
		if err != nil {
			return nil // table missing
		}
		var doc struct {
			Nftables []map[string]json.RawMessage `json:"nftables"`
		}
		if err := json.Unmarshal([]byte(js), &doc); err != nil {
			t.Fatalf("nft -j: %v", err)
		}
		for _, obj := range doc.Nftables {
			raw, ok := obj["set"]
			if !ok {
				continue
			}
			var s struct {
				Elem []json.RawMessage `json:"elem"`
			}
			json.Unmarshal(raw, &s)
			for _, e := range s.Elem {
				k, left := parseElem(e)
				out[k] = left
			}
		}
	}
	return out
}

func parseElem(e json.RawMessage) (string, int) {
	var s string
	if json.Unmarshal(e, &s) == nil {
		return s, -1
	}
	var o struct {
		Elem struct {
			Val     json.RawMessage `json:"val"`
			Expires *int            `json:"expires"`
		} `json:"elem"`
		Prefix *struct {
			Addr string `json:"addr"`
			Len  int    `json:"len"`
		} `json:"prefix"`
	}
	json.Unmarshal(e, &o)
	if o.Prefix != nil {
		return fmt.Sprintf("%s/%d", o.Prefix.Addr, o.Prefix.Len), -1
	}
	left := -1
	if o.Elem.Expires != nil {
		left = *o.Elem.Expires
	}
	if json.Unmarshal(o.Elem.Val, &s) == nil {
		return s, left
	}
	var p struct {
		Prefix struct {
			Addr string `json:"addr"`
			Len  int    `json:"len"`
		} `json:"prefix"`
	}
	json.Unmarshal(o.Elem.Val, &p)
	return fmt.Sprintf("%s/%d", p.Prefix.Addr, p.Prefix.Len), left
}

// rawSession opens the control socket directly.
type rawSession struct {
	c net.Conn
	r *bufio.Reader
}

func (d *daemon) raw() *rawSession {
	d.t.Helper()
	c, err := net.Dial("unix", d.sock)
	if err != nil {
		d.t.Fatal(err)
	}
	d.t.Cleanup(func() { c.Close() })
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	return &rawSession{c: c, r: bufio.NewReaderSize(c, 1<<20)}
}

func (s *rawSession) send(b []byte) error { _, err := s.c.Write(b); return err }

func (s *rawSession) read() (map[string]any, error) {
	line, err := s.r.ReadBytes('\n')
	if err != nil {
		return nil, err
	}
	var m map[string]any
	if err := json.Unmarshal(line, &m); err != nil {
		return nil, fmt.Errorf("response %q: %w", line, err)
	}
	return m, nil
}
