package firewall_test

import (
	"errors"
	"fmt"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
	"net/netip"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/parryhq/parry/firewall"
	"github.com/parryhq/parry/test/netns"
)

func v4Elements(n int, second byte) []firewall.Element {
	out := make([]firewall.Element, 0, n)
	for i := range n {
		a := netip.AddrFrom4([4]byte{10, second ^ byte(i>>16), byte(i >> 8), byte(i)})
		out = append(out, firewall.Element{Prefix: netip.PrefixFrom(a, 32), Timeout: time.Hour})
	}
	return out
}

// TestNetlinkMessageLimit measures, with raw google/nftables calls, where
// one NEWSETELEM message breaks (its element list is an attribute with a
// uint16 length), and checks that Block never gets there.
func TestNetlinkMessageLimit(t *testing.T) {
	ns := netns.New(t)
	c := ns.Conn(t, firewall.ConnOptions()...)
	f, err := firewall.New(c, firewall.Config{Table: "lim"})
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Ensure(); err != nil {
		t.Fatal(err)
	}
	set := &nftables.Set{Table: &nftables.Table{Name: "lim", Family: nftables.TableFamilyINet}, Name: "block4",
		KeyType: nftables.TypeIPAddr, HasTimeout: true, KeyByteOrder: binaryutil.BigEndian}
	// An IPv4 element with a timeout is 28 bytes of list: 2,340 fit 65,520.
	for _, n := range []int{2340, 2341, 5000} {
		els := make([]nftables.SetElement, 0, n)
		for i := range n {
			els = append(els, nftables.SetElement{Key: []byte{10, 9, byte(i >> 8), byte(i)}, Timeout: time.Hour})
		}
		c.FlushSet(set)
		if err := c.SetAddElements(set, els); err != nil {
			t.Fatal(err)
		}
		err := c.Flush()
		got, _ := c.GetSetElements(set)
		t.Logf("raw: one message of %d IPv4 elements (%d bytes of list): err=%v; set holds %d", n, 28*n, err, len(got))
	}
	// Block cuts messages well below the limit: all 5,000 arrive.
	if err := f.Remove(); err != nil {
		t.Fatal(err)
	}
	if err := f.Ensure(); err != nil {
		t.Fatal(err)
	}
	if err := f.Block(v4Elements(5000, 0)); err != nil {
		t.Fatal(err)
	}
	if els, err := f.Elements(); err != nil || len(els) != 5000 {
		t.Fatalf("Elements = %d, %v; want 5000", len(els), err)
	}
}

// TestDefaultSendBufferSplits: on a connection without ConnOptions' send
// buffer, a transaction over ~212 KB fails with EMSGSIZE before anything is
// applied, and Block halves its transaction size until it fits.
func TestDefaultSendBufferSplits(t *testing.T) {
	ns := netns.New(t)
	c := ns.Conn(t) // default buffers (net.core.wmem_default)
	f, err := firewall.New(c, firewall.Config{Table: netns.UniqueName("pry")})
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Ensure(); err != nil {
		t.Fatal(err)
	}
	if err := f.Block(v4Elements(30_000, 0)); err != nil {
		t.Fatalf("Block of 30,000 over a default-buffer connection: %v", err)
	}
	if els, err := f.Elements(); err != nil || len(els) != 30_000 {
		t.Fatalf("Elements = %d, %v; want 30000", len(els), err)
	}
}

// TestManySmallTransactions forces one message per transaction: Block,
// permanent re-blocks and Unblock still come out right (an Unblock's add is
// glued to its delete, so no prefix is left behind between transactions).
func TestManySmallTransactions(t *testing.T) {
	ns := netns.New(t)
	f, err := firewall.New(ns.Conn(t, firewall.ConnOptions()...), firewall.Config{Table: "small", MaxTxBytes: 1})
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Ensure(); err != nil {
		t.Fatal(err)
	}
	els := v4Elements(10_000, 0)
	if err := f.Block(els); err != nil {
		t.Fatal(err)
	}
	for i := range els {
		els[i].Timeout = 0
	}
	if err := f.Block(els[:5000]); err != nil {
		t.Fatal(err)
	}
	var gone []netip.Prefix
	for _, e := range els[:9000] {
		gone = append(gone, e.Prefix)
	}
	for _, e := range v4Elements(3000, 1) { // absent ones
		gone = append(gone, e.Prefix)
	}
	if err := f.Unblock(gone); err != nil {
		t.Fatal(err)
	}
	got, err := f.Elements()
	if err != nil || len(got) != 1000 {
		t.Fatalf("Elements = %d, %v; want 1000", len(got), err)
	}
}

// TestFailedBigBatchLeavesConnectionUsable: a 100,000-element Block into a
// missing table fails in every message of the transaction; the lasting
// connection must stay usable (no stale acknowledgements, no hang), with
// ConnOptions (NETLINK_CAP_ACK keeps the error acks small) and without.
func TestFailedBigBatchLeavesConnectionUsable(t *testing.T) {
	bigSendOnly := nftables.WithSockOptions(func(c *netlink.Conn) error {
		rc, err := c.SyscallConn()
		if err != nil {
			return err
		}
		return rc.Control(func(fd uintptr) { _ = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, 16<<20) })
	})
	for name, opts := range map[string][]nftables.ConnOption{
		"ConnOptions":   firewall.ConnOptions(),
		"plain lasting": nil,
		// Without NETLINK_CAP_ACK the error echoes overflow the receive
		// buffer (ENOBUFS); Block must drop the out-of-step socket.
		"big send buffer only": {bigSendOnly},
	} {
		t.Run(name, func(t *testing.T) {
			ns := netns.New(t)
			f, err := firewall.New(ns.Conn(t, opts...), firewall.Config{Table: netns.UniqueName("pry")})
			if err != nil {
				t.Fatal(err)
			}
			err = f.Block(v4Elements(100_000, 0))
			if err == nil || !errors.Is(err, firewall.ErrNotEnsured) && !errors.Is(err, unix.ENOBUFS) {
				t.Errorf("Block without a table: err = %v, want ErrNotEnsured (or ENOBUFS without CAP_ACK)", err)
			}
			if len(fmt.Sprint(err)) > 300 {
				t.Errorf("error message of %d bytes; want a short one: %.300s...", len(fmt.Sprint(err)), err)
			}
			done := make(chan error, 1)
			go func() {
				if err := f.Ensure(); err != nil {
					done <- err
					return
				}
				if err := f.Block(v4Elements(10, 0)); err != nil {
					done <- err
					return
				}
				els, err := f.Elements()
				if err == nil && len(els) != 10 {
					err = fmt.Errorf("Elements = %d, want 10", len(els))
				}
				done <- err
			}()
			select {
			case err := <-done:
				if err != nil {
					t.Fatalf("after the failed batch: %v", err)
				}
			case <-time.After(20 * time.Second):
				t.Fatal("connection hangs after the failed batch")
			}
		})
	}
}
