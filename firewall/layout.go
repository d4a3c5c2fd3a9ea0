package firewall

import (
	"fmt"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"golang.org/x/sys/unix"
)

// Set names in our table. See docs/firewall.md for what each holds.
const (
	setAllow4     = "allow4"     // permanent allowlist, interval
	setAllow6     = "allow6"     //
	setBlock4     = "block4"     // single addresses, hash with per-element timeout
	setBlock6     = "block6"     //
	setBlock4Net  = "block4net"  // CIDRs, interval with per-element timeout
	setBlock6Net  = "block6net"  //
	setLockdown4  = "lockdown4"  // 0.0.0.0/0 while a lockdown lasts
	setLockdown6  = "lockdown6"  // ::/0 while a lockdown lasts
	setLockAllow4 = "lockallow4" // --allow prefixes of the current lockdown
	setLockAllow6 = "lockallow6" //
	setIsolate4   = "isolate4"   // 0.0.0.0/0 while an isolating lockdown lasts
	setIsolate6   = "isolate6"   // ::/0 while an isolating lockdown lasts
)

// layoutVersion is part of every rule comment; bump it when rules change so
// that Ensure rebuilds tables built by an older parry.
const layoutVersion = "v1"

type setSpec struct {
	name     string
	v6       bool
	interval bool
	timeout  bool
}

func setSpecs() []setSpec {
	return []setSpec{
		{setAllow4, false, true, false},
		{setAllow6, true, true, false},
		{setBlock4, false, false, true},
		{setBlock6, true, false, true},
		{setBlock4Net, false, true, true},
		{setBlock6Net, true, true, true},
		{setLockdown4, false, true, true},
		{setLockdown6, true, true, true},
		{setLockAllow4, false, true, true},
		{setLockAllow6, true, true, true},
		{setIsolate4, false, true, true},
		{setIsolate6, true, true, true},
	}
}

func (s setSpec) set(t *nftables.Table, id uint32) *nftables.Set {
	kt := nftables.TypeIPAddr
	if s.v6 {
		kt = nftables.TypeIP6Addr
	}
	return &nftables.Set{
		Table: t, ID: id, Name: s.name, KeyType: kt,
		Interval: s.interval, HasTimeout: s.timeout,
		KeyByteOrder: binaryutil.BigEndian,
	}
}

type chainSpec struct {
	name string
	hook *nftables.ChainHook
}

func chainSpecs() []chainSpec {
	return []chainSpec{
		{"input", nftables.ChainHookInput},
		{"forward", nftables.ChainHookForward},
		{"output", nftables.ChainHookOutput},
	}
}

func (f *NFT) chain(c chainSpec) *nftables.Chain {
	accept := nftables.ChainPolicyAccept
	return &nftables.Chain{
		Name: c.name, Table: f.table, Hooknum: c.hook,
		Priority: nftables.ChainPriorityRef(nftables.ChainPriority(f.cfg.Priority)),
		Type:     nftables.ChainTypeFilter, Policy: &accept,
	}
}

// rules returns the expression lists of a chain, in order.
func (f *NFT) rules(chain string) [][]expr.Any {
	s := func(name string) *nftables.Set { return f.sets[name] }
	accept, drop := expr.VerdictAccept, expr.VerdictDrop
	if chain == "output" {
		return [][]expr.Any{
			ifIndex(expr.MetaKeyOIF, 1, accept),
			addrInSet(s(setAllow4), false, accept),
			addrInSet(s(setAllow6), false, accept),
			addrInSet(s(setLockAllow4), false, accept),
			addrInSet(s(setLockAllow6), false, accept),
			neighbourDiscovery(),
			addrInSet(s(setIsolate4), false, drop),
			addrInSet(s(setIsolate6), false, drop),
		}
	}
	return [][]expr.Any{
		ifIndex(expr.MetaKeyIIF, 1, accept),
		addrInSet(s(setAllow4), true, accept),
		addrInSet(s(setAllow6), true, accept),
		addrInSet(s(setBlock4), true, drop),
		addrInSet(s(setBlock4Net), true, drop),
		addrInSet(s(setBlock6), true, drop),
		addrInSet(s(setBlock6Net), true, drop),
		addrInSet(s(setLockAllow4), true, accept),
		addrInSet(s(setLockAllow6), true, accept),
		neighbourDiscovery(),
		addrInSet(s(setLockdown4), true, drop),
		addrInSet(s(setLockdown6), true, drop),
	}
}

// ifIndex matches iif/oif 1, which is loopback in every network namespace.
func ifIndex(key expr.MetaKey, index uint32, v expr.VerdictKind) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: key, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(index)},
		&expr.Verdict{Kind: v},
	}
}

// addrInSet is `ip saddr @set` (or daddr, or ip6) with a verdict; drops count.
func addrInSet(s *nftables.Set, source bool, v expr.VerdictKind) []expr.Any {
	proto, off, n := byte(unix.NFPROTO_IPV4), uint32(16), uint32(4)
	if s.KeyType.Bytes == 16 {
		proto, off, n = unix.NFPROTO_IPV6, 24, 16
	}
	if source {
		off -= n
	}
	e := []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{proto}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: n},
		&expr.Lookup{SourceRegister: 1, SetName: s.Name, SetID: s.ID},
	}
	if v == expr.VerdictDrop {
		e = append(e, &expr.Counter{})
	}
	return append(e, &expr.Verdict{Kind: v})
}

// neighbourDiscovery accepts ICMPv6 router/neighbour solicitations and
// advertisements (types 133-136), so that a lockdown or isolation does not
// cut the host off its IPv6 link (NDP uses link-local addresses).
func neighbourDiscovery() []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.NFPROTO_IPV6}},
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_ICMPV6}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 0, Len: 1},
		&expr.Range{Op: expr.CmpOpEq, Register: 1, FromData: []byte{133}, ToData: []byte{136}},
		&expr.Verdict{Kind: expr.VerdictAccept},
	}
}

// ruleComment tags each rule we build; check compares the tags, so a rule
// added, removed or replaced by someone else (or an older layout) shows.
func ruleComment(chain string, i int) string {
	return fmt.Sprintf("parry/%s %s#%d", layoutVersion, chain, i)
}

// buildTable queues, into the connection's buffer, the creation of the whole
// table. If replace, the existing table is deleted first in the same
// transaction (add+delete+add, so the delete cannot fail on a missing table).
func (f *NFT) buildTable(replace bool) error {
	if replace {
		f.conn.AddTable(f.table)
		f.conn.DelTable(f.table)
	}
	f.conn.AddTable(f.table)
	for _, sp := range setSpecs() {
		if err := f.conn.AddSet(f.sets[sp.name], nil); err != nil {
			return fmt.Errorf("add set %s: %w", sp.name, err)
		}
	}
	for _, cs := range chainSpecs() {
		c := f.conn.AddChain(f.chain(cs))
		for i, e := range f.rules(cs.name) {
			f.conn.AddRule(&nftables.Rule{
				Table: f.table, Chain: c, Exprs: e,
				UserData: userdata.AppendString(nil, userdata.TypeComment, ruleComment(cs.name, i)),
			})
		}
	}
	return nil
}

// check compares the kernel's table with the layout: sets (names, key types,
// flags), base chains (hook, priority, type, policy) and rules (count and
// their comment tags). It returns "" when intact, else why not.
// It never reads set elements.
func (f *NFT) check() (string, error) {
	if _, err := f.conn.ListTableOfFamily(f.cfg.Table, nftables.TableFamilyINet); err != nil {
		if isNotFound(err) {
			return "table missing", nil
		}
		return "", fmt.Errorf("get table: %w", err)
	}
	if why, err := f.checkSets(); why != "" || err != nil {
		return why, err
	}
	return f.checkChains()
}

func (f *NFT) checkSets() (string, error) {
	sets, err := f.conn.GetSets(f.table)
	if err != nil {
		return "", fmt.Errorf("list sets: %w", err)
	}
	have := make(map[string]*nftables.Set, len(sets))
	for _, s := range sets {
		have[s.Name] = s
	}
	for _, sp := range setSpecs() {
		s, ok := have[sp.name]
		if !ok {
			return "set " + sp.name + " missing", nil
		}
		want := f.sets[sp.name]
		if s.KeyType.Bytes != want.KeyType.Bytes || s.Interval != sp.interval || s.HasTimeout != sp.timeout || s.IsMap || s.Constant {
			return "set " + sp.name + " differs", nil
		}
	}
	return "", nil
}

func (f *NFT) checkChains() (string, error) {
	chains, err := f.conn.ListChainsOfTableFamily(nftables.TableFamilyINet)
	if err != nil {
		return "", fmt.Errorf("list chains: %w", err)
	}
	have := make(map[string]*nftables.Chain)
	for _, c := range chains {
		if c.Table != nil && c.Table.Name == f.cfg.Table {
			have[c.Name] = c
		}
	}
	for _, cs := range chainSpecs() {
		c, ok := have[cs.name]
		if !ok {
			return "chain " + cs.name + " missing", nil
		}
		if c.Hooknum == nil || *c.Hooknum != *cs.hook || c.Priority == nil || int(*c.Priority) != f.cfg.Priority ||
			c.Type != nftables.ChainTypeFilter || c.Policy == nil || *c.Policy != nftables.ChainPolicyAccept {
			return "chain " + cs.name + " differs", nil
		}
		rules, err := f.conn.GetRules(f.table, c)
		if err != nil {
			return "", fmt.Errorf("list rules of %s: %w", cs.name, err)
		}
		if len(rules) != len(f.rules(cs.name)) {
			return fmt.Sprintf("chain %s has %d rules, want %d", cs.name, len(rules), len(f.rules(cs.name))), nil
		}
		for i, r := range rules {
			got, _ := userdata.GetString(r.UserData, userdata.TypeComment)
			if got != ruleComment(cs.name, i) {
				return fmt.Sprintf("chain %s rule %d differs (%q)", cs.name, i, got), nil
			}
		}
	}
	return "", nil
}
