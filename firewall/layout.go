package firewall

import (
	"fmt"
	"slices"

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

// The block sets are named ACTION FAMILY KIND: block4, block4net,
// block4proto, block4port, reject4, ..., reject6port (see blockSetName).

// Chains: three base chains of the configured priority, the prerouting
// chain of port- and protocol-scoped blocks, and the reject chain that
// reject rules jump to.
const (
	chainPrerouting = "prerouting"
	chainInput      = "input"
	chainForward    = "forward"
	chainOutput     = "output"
	chainReject     = "rejecting"
)

// PreroutingPriority is the hook priority of the prerouting chain, where
// port- and protocol-scoped blocks match: raw (-300), before conntrack
// (-200) and before destination NAT (-100), so that a port is the one the
// client connected to, not the one DNAT rewrote it to (docs/firewall.md).
const PreroutingPriority = -300

// layoutVersion is part of every rule comment; bump it when rules change so
// that Ensure rebuilds tables built by an older parry.
const layoutVersion = "v2"

// keyKind is what a set's elements are made of.
type keyKind uint8

const (
	keyAddr          keyKind = iota // an address or interval of addresses
	keyAddrProto                    // address . inet_proto (concatenated, interval)
	keyAddrProtoPort                // address . inet_proto . inet_service (concatenated, interval)
)

type setSpec struct {
	name     string
	v6       bool
	interval bool
	timeout  bool
	key      keyKind
}

// blockKinds are the four kinds of block set, by their name suffix.
var blockKinds = []struct {
	suffix   string
	key      keyKind
	interval bool
}{
	{"", keyAddr, false},
	{"net", keyAddr, true},
	{"proto", keyAddrProto, true},
	{"port", keyAddrProtoPort, true},
}

// blockSetName is the name of the block set for an action, a family and a
// kind suffix ("", "net", "proto", "port").
func blockSetName(a Action, v6 bool, suffix string) string {
	n := "block4"
	if a == Reject {
		n = "reject4"
	}
	if v6 {
		n = n[:len(n)-1] + "6"
	}
	return n + suffix
}

func setSpecs() []setSpec {
	specs := []setSpec{
		{name: setAllow4, interval: true},
		{name: setAllow6, v6: true, interval: true},
	}
	for _, a := range []Action{Drop, Reject} {
		for _, v6 := range []bool{false, true} {
			for _, k := range blockKinds {
				specs = append(specs, setSpec{name: blockSetName(a, v6, k.suffix), v6: v6, interval: k.interval, timeout: true, key: k.key})
			}
		}
	}
	return append(specs,
		setSpec{name: setLockdown4, interval: true, timeout: true},
		setSpec{name: setLockdown6, v6: true, interval: true, timeout: true},
		setSpec{name: setLockAllow4, interval: true, timeout: true},
		setSpec{name: setLockAllow6, v6: true, interval: true, timeout: true},
		setSpec{name: setIsolate4, interval: true, timeout: true},
		setSpec{name: setIsolate6, v6: true, interval: true, timeout: true},
	)
}

func (s setSpec) set(t *nftables.Table, id uint32) *nftables.Set {
	kt := nftables.TypeIPAddr
	if s.v6 {
		kt = nftables.TypeIP6Addr
	}
	concat := false
	switch s.key {
	case keyAddrProto:
		kt, concat = nftables.MustConcatSetType(kt, nftables.TypeInetProto), true
	case keyAddrProtoPort:
		kt, concat = nftables.MustConcatSetType(kt, nftables.TypeInetProto, nftables.TypeInetService), true
	}
	return &nftables.Set{
		Table: t, ID: id, Name: s.name, KeyType: kt,
		Interval: s.interval, HasTimeout: s.timeout, Concatenation: concat,
		KeyByteOrder: binaryutil.BigEndian,
	}
}

type chainSpec struct {
	name string
	hook *nftables.ChainHook // nil: a regular chain (jumped to)
}

// chainSpecs in creation order: the reject chain first, as rules jump to it.
func chainSpecs() []chainSpec {
	return []chainSpec{
		{chainReject, nil},
		{chainPrerouting, nftables.ChainHookPrerouting},
		{chainInput, nftables.ChainHookInput},
		{chainForward, nftables.ChainHookForward},
		{chainOutput, nftables.ChainHookOutput},
	}
}

// priority is the hook priority of a base chain.
func (f *NFT) priority(c chainSpec) int {
	if c.name == chainPrerouting {
		return PreroutingPriority
	}
	return f.cfg.Priority
}

func (f *NFT) chain(c chainSpec) *nftables.Chain {
	if c.hook == nil {
		return &nftables.Chain{Name: c.name, Table: f.table}
	}
	accept := nftables.ChainPolicyAccept
	return &nftables.Chain{
		Name: c.name, Table: f.table, Hooknum: c.hook,
		Priority: nftables.ChainPriorityRef(nftables.ChainPriority(f.priority(c))),
		Type:     nftables.ChainTypeFilter, Policy: &accept,
	}
}

// rules returns the expression lists of a chain, in order.
func (f *NFT) rules(chain string) [][]expr.Any {
	s := func(name string) *nftables.Set { return f.sets[name] }
	accept, drop := expr.VerdictAccept, expr.VerdictDrop
	blocks := func(a Action, suffixes ...string) [][]expr.Any {
		var out [][]expr.Any
		for _, v6 := range []bool{false, true} {
			for _, suf := range suffixes {
				set := s(blockSetName(a, v6, suf))
				switch suf {
				case "proto", "port":
					out = append(out, scopeInSet(set, v6, a))
				default:
					out = append(out, append(addrMatch(set, true), actionVerdict(a)...))
				}
			}
		}
		return out
	}
	// Drop blocks, then neighbour discovery, then reject blocks: a host
	// cannot send a reset or an ICMPv6 error to a peer whose neighbour
	// advertisements it rejects.
	blocksND := func(suffixes ...string) [][]expr.Any {
		out := blocks(Drop, suffixes...)
		out = append(out, neighbourDiscovery())
		return append(out, blocks(Reject, suffixes...)...)
	}
	head := [][]expr.Any{
		ifIndex(expr.MetaKeyIIF, 1, accept),
		addrInSet(s(setAllow4), true, accept),
		addrInSet(s(setAllow6), true, accept),
	}
	switch chain {
	case chainReject:
		return [][]expr.Any{
			{
				&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_TCP}},
				&expr.Reject{Type: unix.NFT_REJECT_TCP_RST},
			},
			{&expr.Reject{Type: unix.NFT_REJECT_ICMPX_UNREACH, Code: unix.NFT_REJECT_ICMPX_ADMIN_PROHIBITED}},
		}
	case chainPrerouting:
		return append(head, blocksND("proto", "port")...)
	case chainOutput:
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
	out := append(head, blocksND("", "net")...)
	return append(out,
		addrInSet(s(setLockAllow4), true, accept),
		addrInSet(s(setLockAllow6), true, accept),
		addrInSet(s(setLockdown4), true, drop),
		addrInSet(s(setLockdown6), true, drop),
	)
}

// actionVerdict is a block's verdict: a counted drop, or a counted jump to
// the reject chain.
func actionVerdict(a Action) []expr.Any {
	if a == Reject {
		return []expr.Any{&expr.Counter{}, &expr.Verdict{Kind: expr.VerdictJump, Chain: chainReject}}
	}
	return []expr.Any{&expr.Counter{}, &expr.Verdict{Kind: expr.VerdictDrop}}
}

// Registers of a concatenation: the 32-bit registers from NFT_REG32_00 on.
const reg32First = 8

// scopeInSet is `ip saddr . meta l4proto [. th dport] @set` (or ip6) with
// the action's verdict. Each field of a concatenation takes whole 32-bit
// registers (the proto byte and the port are padded to 4 bytes).
func scopeInSet(s *nftables.Set, v6 bool, a Action) []expr.Any {
	proto, off, n := byte(unix.NFPROTO_IPV4), uint32(12), uint32(4)
	if v6 {
		proto, off, n = unix.NFPROTO_IPV6, 8, 16
	}
	reg := uint32(reg32First)
	e := []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{proto}},
		&expr.Payload{DestRegister: reg, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: n},
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: reg + n/4},
	}
	if s.KeyType.Bytes == n+8 { // with a port
		e = append(e, &expr.Payload{DestRegister: reg + n/4 + 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2})
	}
	e = append(e, &expr.Lookup{SourceRegister: reg, SetName: s.Name, SetID: s.ID})
	return append(e, actionVerdict(a)...)
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
	e := addrMatch(s, source)
	if v == expr.VerdictDrop {
		e = append(e, &expr.Counter{})
	}
	return append(e, &expr.Verdict{Kind: v})
}

// addrMatch is `ip saddr @set` (or daddr, or ip6) without a verdict.
func addrMatch(s *nftables.Set, source bool) []expr.Any {
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
	return e
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
	all := layoutDiff{}
	for _, sp := range setSpecs() {
		all.missingSets = append(all.missingSets, sp.name)
	}
	for _, cs := range chainSpecs() {
		all.missingChains = append(all.missingChains, cs.name)
	}
	return f.repairTable(all)
}

// layoutDiff is how an existing table differs from the layout.
type layoutDiff struct {
	why           string   // the first difference, for the log; "" when intact
	rebuild       bool     // a difference only a rebuild mends (table missing, a set or chain of another type)
	missingSets   []string // sets to add
	missingChains []string // chains to add, with their rules
	staleChains   []string // chains whose rules differ: flush and refill
}

func (d *layoutDiff) note(why string) {
	if d.why == "" {
		d.why = why
	}
}

// repairTable queues what mends an existing table in place: missing sets
// and chains added, chains with other rules flushed and refilled. Elements
// of the sets already there are kept. An upgrade from an older layout takes
// this path.
func (f *NFT) repairTable(d layoutDiff) error {
	for _, name := range d.missingSets {
		if err := f.conn.AddSet(f.sets[name], nil); err != nil {
			return fmt.Errorf("add set %s: %w", name, err)
		}
	}
	fill := map[string]bool{}
	for _, name := range d.missingChains {
		fill[name] = true
	}
	for _, name := range d.staleChains {
		fill[name] = true
	}
	for _, cs := range chainSpecs() { // the reject chain first: rules jump to it
		if !fill[cs.name] {
			continue
		}
		var c *nftables.Chain
		if slices.Contains(d.missingChains, cs.name) {
			c = f.conn.AddChain(f.chain(cs))
		} else {
			c = f.chain(cs)
			f.conn.FlushChain(c)
		}
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
// flags), chains (hook, priority, type, policy) and rules (count and their
// comment tags). It never reads set elements.
func (f *NFT) check() (layoutDiff, error) {
	var d layoutDiff
	if _, err := f.conn.ListTableOfFamily(f.cfg.Table, nftables.TableFamilyINet); err != nil {
		if isNotFound(err) {
			d.note("table missing")
			d.rebuild = true
			return d, nil
		}
		return d, fmt.Errorf("get table: %w", err)
	}
	if err := f.checkSets(&d); err != nil {
		return d, err
	}
	return d, f.checkChains(&d)
}

func (f *NFT) checkSets(d *layoutDiff) error {
	sets, err := f.conn.GetSets(f.table)
	if err != nil {
		return fmt.Errorf("list sets: %w", err)
	}
	have := make(map[string]*nftables.Set, len(sets))
	for _, s := range sets {
		have[s.Name] = s
	}
	for _, sp := range setSpecs() {
		s, ok := have[sp.name]
		if !ok {
			d.note("set " + sp.name + " missing")
			d.missingSets = append(d.missingSets, sp.name)
			continue
		}
		want := f.sets[sp.name]
		if s.KeyType.Bytes != want.KeyType.Bytes || s.Interval != sp.interval || s.HasTimeout != sp.timeout ||
			s.Concatenation != want.Concatenation || s.IsMap || s.Constant {
			d.note("set " + sp.name + " differs")
			d.rebuild = true
		}
	}
	return nil
}

func (f *NFT) checkChains(d *layoutDiff) error {
	chains, err := f.conn.ListChainsOfTableFamily(nftables.TableFamilyINet)
	if err != nil {
		return fmt.Errorf("list chains: %w", err)
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
			d.note("chain " + cs.name + " missing")
			d.missingChains = append(d.missingChains, cs.name)
			continue
		}
		if cs.hook == nil {
			if c.Hooknum != nil {
				d.note("chain " + cs.name + " differs")
				d.rebuild = true
				continue
			}
		} else if c.Hooknum == nil || *c.Hooknum != *cs.hook || c.Priority == nil || int(*c.Priority) != f.priority(cs) ||
			c.Type != nftables.ChainTypeFilter || c.Policy == nil || *c.Policy != nftables.ChainPolicyAccept {
			d.note("chain " + cs.name + " differs")
			d.rebuild = true
			continue
		}
		rules, err := f.conn.GetRules(f.table, c)
		if err != nil {
			return fmt.Errorf("list rules of %s: %w", cs.name, err)
		}
		if why := rulesDiffer(cs.name, rules, len(f.rules(cs.name))); why != "" {
			d.note(why)
			d.staleChains = append(d.staleChains, cs.name)
		}
	}
	return nil
}

func rulesDiffer(chain string, rules []*nftables.Rule, want int) string {
	if len(rules) != want {
		return fmt.Sprintf("chain %s has %d rules, want %d", chain, len(rules), want)
	}
	for i, r := range rules {
		got, _ := userdata.GetString(r.UserData, userdata.TypeComment)
		if got != ruleComment(chain, i) {
			return fmt.Sprintf("chain %s rule %d differs (%q)", chain, i, got)
		}
	}
	return ""
}
