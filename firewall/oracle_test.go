package firewall_test

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"regexp"
	"sort"
	"strings"
	"testing"

	"github.com/parryhq/parry/firewall"
	"github.com/parryhq/parry/test/netns"
)

// newFirewall returns an ensured firewall with a unique table in ns.
func newFirewall(t testing.TB, ns *netns.NS) *firewall.NFT {
	t.Helper()
	f := newUnensured(t, ns)
	if err := f.Ensure(); err != nil {
		t.Fatalf("Ensure: %v", err)
	}
	return f
}

func newUnensured(t testing.TB, ns *netns.NS) *firewall.NFT {
	t.Helper()
	c := ns.Conn(t, firewall.ConnOptions()...)
	f, err := firewall.New(c, firewall.Config{Table: netns.UniqueName("pry")})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return f
}

// nftTable is the kernel's view of one table as `nft -j list table` prints it.
type nftTable struct {
	Exists bool
	Sets   map[string]nftSet
	Chains map[string]nftChain
	Rules  map[string]int // rules per chain
}

type nftSet struct {
	Type  string
	Flags []string
	Elems map[string]float64 // prefix → timeout in seconds (0 = permanent)
}

type nftChain struct {
	Type, Hook, Policy string
	Prio               int
}

// listTable runs `nft -j list table inet NAME` inside ns: the oracle.
func listTable(t testing.TB, ns *netns.NS, table string) nftTable {
	t.Helper()
	out, err := ns.Run("nft", "-j", "list", "table", "inet", table)
	if err != nil {
		if strings.Contains(out, "No such file or directory") {
			return nftTable{}
		}
		t.Fatalf("nft list: %v", err)
	}
	var doc struct {
		Nftables []map[string]json.RawMessage `json:"nftables"`
	}
	if err := json.Unmarshal([]byte(out), &doc); err != nil {
		t.Fatalf("parse nft -j output: %v\n%s", err, out)
	}
	v := nftTable{Exists: true, Sets: map[string]nftSet{}, Chains: map[string]nftChain{}, Rules: map[string]int{}}
	for _, obj := range doc.Nftables {
		switch {
		case obj["set"] != nil:
			var s struct {
				Name  string            `json:"name"`
				Type  json.RawMessage   `json:"type"`
				Flags []string          `json:"flags"`
				Elem  []json.RawMessage `json:"elem"`
			}
			mustUnmarshal(t, obj["set"], &s)
			set := nftSet{Type: joinType(t, s.Type), Flags: s.Flags, Elems: map[string]float64{}}
			sort.Strings(set.Flags)
			for _, e := range s.Elem {
				p, timeout := parseElem(t, e)
				set.Elems[p] = timeout
			}
			v.Sets[s.Name] = set
		case obj["chain"] != nil:
			var c struct {
				Name, Type, Hook, Policy string
				Prio                     int
			}
			mustUnmarshal(t, obj["chain"], &c)
			v.Chains[c.Name] = nftChain{Type: c.Type, Hook: c.Hook, Policy: c.Policy, Prio: c.Prio}
		case obj["rule"] != nil:
			var r struct{ Chain string }
			mustUnmarshal(t, obj["rule"], &r)
			v.Rules[r.Chain]++
		}
	}
	return v
}

func mustUnmarshal(t testing.TB, b []byte, v any) {
	t.Helper()
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("parse %s: %v", b, err)
	}
}

// parseElem turns one nft JSON element into "prefix" and its timeout.
func parseElem(t testing.TB, raw json.RawMessage) (string, float64) {
	t.Helper()
	var wrapped struct {
		Elem *struct {
			Val     json.RawMessage `json:"val"`
			Timeout float64         `json:"timeout"`
		} `json:"elem"`
	}
	if err := json.Unmarshal(raw, &wrapped); err == nil && wrapped.Elem != nil {
		return parseVal(t, wrapped.Elem.Val), wrapped.Elem.Timeout
	}
	return parseVal(t, raw), 0
}

// joinType renders a set's type: "ipv4_addr", or a concatenation as
// "ipv4_addr . inet_proto . inet_service".
func joinType(t testing.TB, raw json.RawMessage) string {
	var one string
	if json.Unmarshal(raw, &one) == nil {
		return one
	}
	var many []string
	mustUnmarshal(t, raw, &many)
	return strings.Join(many, " . ")
}

// parseVal renders an element's value: "prefix", or for a concatenation
// "prefix . proto . port" (nft's names: "tcp", or a number).
func parseVal(t testing.TB, raw json.RawMessage) string {
	t.Helper()
	var s string
	if json.Unmarshal(raw, &s) == nil {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return s // a protocol name in a concatenation
		}
		return netip.PrefixFrom(a, a.BitLen()).String()
	}
	var n float64
	if json.Unmarshal(raw, &n) == nil {
		return fmt.Sprint(n)
	}
	var c struct {
		Concat []json.RawMessage `json:"concat"`
	}
	if json.Unmarshal(raw, &c) == nil && c.Concat != nil {
		parts := make([]string, len(c.Concat))
		for i, x := range c.Concat {
			parts[i] = parseVal(t, x)
		}
		return strings.Join(parts, " . ")
	}
	var p struct {
		Prefix *struct {
			Addr string `json:"addr"`
			Len  int    `json:"len"`
		} `json:"prefix"`
		Range []string `json:"range"`
	}
	mustUnmarshal(t, raw, &p)
	switch {
	case p.Prefix != nil:
		return fmt.Sprintf("%s/%d", p.Prefix.Addr, p.Prefix.Len)
	case p.Range != nil:
		return p.Range[0] + "-" + p.Range[1]
	}
	t.Fatalf("unknown element %s", raw)
	return ""
}

// sortedElements renders Elements as sorted "prefix" strings.
func prefixes(els []firewall.Element) []string {
	var out []string
	for _, e := range els {
		out = append(out, e.Prefix.String())
	}
	sort.Strings(out)
	return out
}

func stringsContains(s, sub string) bool { return strings.Contains(s, sub) }

// stripExpires removes the "expires ..." parts of nft output, which tick.
func stripExpires(s string) string {
	return expiresRE.ReplaceAllString(s, "")
}

var expiresRE = regexp.MustCompile(` expires [0-9hmsd]+`)
