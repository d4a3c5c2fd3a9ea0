// Package firewall enforces parry's decisions in the kernel through its own
// nftables table (inet parry by default), over one long-lived netlink
// connection, in batched transactions. Expiry is the kernel's: every block
// element carries its own timeout. It never flushes the ruleset and never
// touches another table.
//
// The layout, the rules and the measured limits are documented in
// docs/firewall.md.
package firewall

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"time"

	"github.com/google/nftables"
	"github.com/mdlayher/netlink"
)

// DefaultTable and DefaultPriority are used when Config leaves them zero.
const (
	DefaultTable    = "parry"
	DefaultPriority = -10
)

// Config tunes the table. The zero value of each field means its default.
type Config struct {
	Table    string       // table name in family inet; default "parry"
	Priority int          // hook priority of our chains; 0 means DefaultPriority (-10), so priority 0 itself is not available
	Logger   *slog.Logger // default slog.Default()
	Now      func() time.Time

	// MaxTxBytes bounds the netlink bytes sent in one transaction. 0 means
	// DefaultMaxTxBytes. A transaction larger than the socket's send
	// buffer fails with EMSGSIZE; Block then halves the bound and retries,
	// so a connection without the large buffer of ConnOptions still works.
	MaxTxBytes int

	// WatchInterval is how often Watch polls the ruleset generation; default 250ms.
	WatchInterval time.Duration
}

// Element is one block: a single address (/32, /128) or a CIDR, and how long
// it has left. Timeout 0 means permanent. The zero scope and action (the
// only ones before issue 14) drop every packet from Prefix.
//
// Proto and Port scope a block: Proto alone (Port 0) blocks every packet of
// that IP protocol (unix.IPPROTO_TCP, IPPROTO_UDP, IPPROTO_ICMP, ...); Port
// needs a protocol with ports (TCP, UDP, SCTP, DCCP, UDP-Lite) and blocks
// that destination port only, the port the client connected to (before any
// DNAT). A block of several ports, or of "tcp and udp", is one Element per
// (Proto, Port).
//
// Action is Drop (silent) or Reject (a TCP reset for TCP, ICMP/ICMPv6
// administratively prohibited otherwise).
type Element struct {
	Prefix  netip.Prefix
	Timeout time.Duration
	Proto   uint8  // 0: every protocol (then Port must be 0)
	Port    uint16 // 0: every port of Proto
	Action  Action
}

// Action is what the kernel does with a blocked packet.
type Action uint8

const (
	Drop   Action = iota // silently (the default)
	Reject               // TCP reset for TCP, ICMP(v6) administratively prohibited otherwise
)

func (a Action) String() string {
	switch a {
	case Drop:
		return "drop"
	case Reject:
		return "reject"
	}
	return fmt.Sprintf("action(%d)", uint8(a))
}

// Scope is an element's kernel class: protocol, port and action. Elements
// of one scope live in one set and must not overlap there; package
// firewall/union keeps them apart (use Scope as its scope type).
type Scope struct {
	Proto  uint8
	Port   uint16
	Action Action
}

// Scope returns e's scope.
func (e Element) Scope() Scope { return Scope{e.Proto, e.Port, e.Action} }

// Element is the element of scope s for prefix p with timeout t.
func (s Scope) Element(p netip.Prefix, t time.Duration) Element {
	return Element{Prefix: p, Timeout: t, Proto: s.Proto, Port: s.Port, Action: s.Action}
}

// Plain reports whether e has no scope and the default action: it lives in
// the sets of the original layout (block4, block6, block4net, block6net).
func (e Element) Plain() bool { return e.Proto == 0 && e.Port == 0 && e.Action == Drop }

// Lockdown is the state of a host lockdown. The kernel ends it after Timeout
// even if the daemon is dead.
type Lockdown struct {
	Allow   []netip.Prefix // extra allowlist for this lockdown only (the permanent allowlist always applies)
	Isolate bool           // drop outbound too, except to the allowlist and loopback
	Timeout time.Duration  // > 0, always
}

// Sentinel errors callers branch on with errors.Is.
var (
	// ErrOverlap: a CIDR overlaps one already in the same interval set
	// (e.g. 10.0.0.0/8 and 10.1.0.0/16). The kernel refuses the whole
	// transaction; nothing was changed.
	ErrOverlap = errors.New("firewall: prefix overlaps one already blocked")
	// ErrInvalidPrefix: a prefix that is not a valid IPv4 or IPv6 CIDR.
	ErrInvalidPrefix = errors.New("firewall: invalid prefix")
	// ErrInvalidTimeout: a negative timeout, or a lockdown without one.
	ErrInvalidTimeout = errors.New("firewall: invalid timeout")
	// ErrInvalidScope: a port without a protocol that has ports, or an
	// unknown action.
	ErrInvalidScope = errors.New("firewall: invalid block scope or action")
	// ErrNotEnsured: the table is not there; call Ensure.
	ErrNotEnsured = errors.New("firewall: table missing, call Ensure")
)

// NFT is parry's table in one network namespace. Its methods are safe for
// concurrent use; each change is one netlink transaction (Block with more
// elements than fit one transaction is split, see MaxTxBytes).
type NFT struct {
	conn  *nftables.Conn
	cfg   Config
	log   *slog.Logger
	table *nftables.Table

	mu    sync.Mutex // serialises use of conn's message buffer
	sets  map[string]*nftables.Set
	maxTx int // learned transaction bound (bytes), <= cfg.MaxTxBytes

	probed, canUpdate bool // whether re-adding an element replaces its timeout (see probe.go)

	// Generation accounting for Watch (watch.go), guarded by mu: while
	// Watch runs, genConn is its socket, and known is the latest ruleset
	// generation up to which every commit is accounted for (seen by Watch,
	// or ours following it with nothing foreign in between).
	genConn *netlink.Conn
	known   uint32
}

// New wraps a connection (production: nftables.New(firewall.ConnOptions()...);
// tests: a connection into a throwaway namespace). It does not touch the
// kernel; call Ensure.
func New(conn *nftables.Conn, cfg Config) (*NFT, error) {
	if conn == nil {
		return nil, errors.New("firewall: nil nftables connection")
	}
	if cfg.Table == "" {
		cfg.Table = DefaultTable
	}
	if len(cfg.Table) > 255 {
		return nil, fmt.Errorf("firewall: table name %q too long", cfg.Table)
	}
	if cfg.Priority == 0 {
		cfg.Priority = DefaultPriority
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.MaxTxBytes <= 0 {
		cfg.MaxTxBytes = DefaultMaxTxBytes
	}
	if cfg.WatchInterval <= 0 {
		cfg.WatchInterval = 250 * time.Millisecond
	}
	f := &NFT{
		conn:  conn,
		cfg:   cfg,
		log:   cfg.Logger.With("table", "inet "+cfg.Table),
		table: &nftables.Table{Name: cfg.Table, Family: nftables.TableFamilyINet},
		maxTx: cfg.MaxTxBytes,
	}
	f.sets = make(map[string]*nftables.Set)
	for i, s := range setSpecs() {
		f.sets[s.name] = s.set(f.table, uint32(i+1))
	}
	return f, nil
}

// Table is the name of our table (family inet).
func (f *NFT) Table() string { return f.cfg.Table }
