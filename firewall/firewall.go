// Package firewall enforces parry's decisions in the kernel through its own
// nftables table (inet parry by default), over one long-lived netlink
// connection, in batched transactions. Expiry is the kernel's: every block
// element carries its own timeout. It never flushes the ruleset and never
// touches another table.
//
// API CONTRACT (stub written by the lead; the firewall owner fills it in and
// may extend it, but keeps these names and meanings so the agent can build
// against them).
package firewall

import (
	"errors"
	"log/slog"
	"net/netip"
	"time"

	"github.com/google/nftables"
)

// Config tunes the table. The zero value of each field means its default.
type Config struct {
	Table    string       // table name in family inet; default "parry"
	Priority int          // hook priority of our chains; default -10 (set DefaultPriority explicitly for 0)
	Logger   *slog.Logger // default slog.Default()
	Now      func() time.Time
}

// Element is one block: a single address (/32, /128) or a CIDR, and how long
// it has left. Timeout 0 means permanent.
type Element struct {
	Prefix  netip.Prefix
	Timeout time.Duration
}

// Lockdown is the state of a host lockdown. The kernel ends it after Timeout
// even if the daemon is dead.
type Lockdown struct {
	Allow   []netip.Prefix // extra allowlist for this lockdown only (the permanent allowlist always applies)
	Isolate bool           // drop outbound too, except to the allowlist and loopback
	Timeout time.Duration  // > 0, always
}

var errNotImplemented = errors.New("firewall: not implemented yet")

// NFT is parry's table in one network namespace.
type NFT struct {
	conn *nftables.Conn
	cfg  Config
}

// New wraps a connection (production: nftables.New(nftables.AsLasting());
// tests: a connection into a throwaway namespace). It does not touch the
// kernel; call Ensure.
func New(conn *nftables.Conn, cfg Config) (*NFT, error) { return &NFT{conn: conn, cfg: cfg}, nil }

// Ensure creates the table, sets and chains if any is missing, in one
// transaction. It is idempotent and never removes elements from an intact table.
func (f *NFT) Ensure() error { return errNotImplemented }

// Block adds elements, or replaces them with the new timeout if present.
// Large inputs are split into batches below the netlink message limit.
func (f *NFT) Block(elems []Element) error { return errNotImplemented }

// Unblock removes prefixes; ones not present are not an error.
func (f *NFT) Unblock(prefixes []netip.Prefix) error { return errNotImplemented }

// SetAllow replaces the permanent allowlist (never blocked, reachable in lockdown).
func (f *NFT) SetAllow(prefixes []netip.Prefix) error { return errNotImplemented }

// Lockdown starts or replaces a lockdown.
func (f *NFT) Lockdown(l Lockdown) error { return errNotImplemented }

// Release ends a lockdown now; no lockdown is not an error.
func (f *NFT) Release() error { return errNotImplemented }

// Elements returns the kernel's view of the block sets with remaining
// timeouts. For reconcile at start and for tests; never on a hot path.
func (f *NFT) Elements() ([]Element, error) { return nil, errNotImplemented }

// Present reports cheaply whether the table and its chains and sets are in
// the kernel as built.
func (f *NFT) Present() (bool, error) { return false, errNotImplemented }

// Remove deletes parry's table (package purge, `parry uninstall-rules`).
// A missing table is not an error.
func (f *NFT) Remove() error { return errNotImplemented }
