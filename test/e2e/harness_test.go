// Package e2e runs parryd and parry as real processes: the daemon inside a
// throwaway network namespace (its own nftables), the CLI talking to it over
// the control socket, and real packets from a peer namespace.
package e2e

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/parryhq/parry/test/daemon"
	"github.com/parryhq/parry/test/netns"
	"github.com/parryhq/parry/test/parrybin"
)

func TestMain(m *testing.M) {
	code := m.Run()
	parrybin.Remove()
	os.Exit(code)
}

// quietConfig turns off the parts the core tests do not exercise: the
// integrity watcher, whose first start hashes the host's system files (CPU
// and I/O that would skew the benchmarks and slow every test).
const quietConfig = "integrity:\n  enabled: false\n"

// newDaemon prepares (does not start) a parryd in ns on quietConfig, or on
// the config named by a --config in extra.
func newDaemon(t testing.TB, ns *netns.NS, extra ...string) *daemon.Daemon {
	t.Helper()
	return daemon.New(t, ns, daemon.Options{Config: quietConfig, Args: extra})
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

func raw(t testing.TB, d *daemon.Daemon) *rawSession {
	t.Helper()
	c, err := net.Dial("unix", d.Socket)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
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

// kernelCovers reports whether an element of elems (kernelElems) holds
// addr. The kernel holds the union of the blocks, where neighbours with
// the same expiry merge into one prefix, so a blocked address need not be
// an element of its own.
func kernelCovers(elems map[string]int, addr string) bool {
	a, err := netip.ParseAddr(addr)
	if err != nil {
		return false
	}
	for k := range elems {
		if p, err := netip.ParsePrefix(k); err == nil && p.Contains(a) {
			return true
		}
		if b, err := netip.ParseAddr(k); err == nil && b == a {
			return true
		}
	}
	return false
}

// kernelCovered counts the IPv4 addresses the elements of elems hold.
func kernelCovered(elems map[string]int) int {
	n := 0
	for k := range elems {
		if p, err := netip.ParsePrefix(k); err == nil && p.Addr().Is4() {
			n += 1 << (32 - p.Bits())
		} else if a, err := netip.ParseAddr(k); err == nil && a.Is4() {
			n++
		}
	}
	return n
}
