// Package evidence captures snapshots of the host (processes, connections,
// listening sockets, logged-in users, load) when something happens, and keeps
// them as write-once JSON files whose SHA-256 the agent records in its audit
// chain. It also answers "what was this IP touching" at block time.
//
// Collection is bounded in time (the caller's context plus Config.Timeout) and
// in size (caps on counts, with truncated flags), and runs one at a time, so
// a burst of triggers cannot pile up /proc walks.
package evidence

import (
	"errors"
	"fmt"
	"time"

	"github.com/parryhq/parry/agent/api"
)

// Defaults for the zero values of Config.
const (
	DefaultTimeout        = 5 * time.Second
	DefaultMaxProcesses   = 4096
	DefaultMaxConnections = 4096
	DefaultMaxCmdline     = 1024
	DefaultBlockTimeout   = 2 * time.Second
)

// Limits on the caps themselves, so a typo cannot ask for a gigabyte file.
const (
	maxProcessesLimit   = 1 << 16
	maxConnectionsLimit = 1 << 16
	maxCmdlineLimit     = 1 << 16
)

// Config is the `evidence:` section of parry.yaml. The zero value means the
// defaults: automatic capture on lockdown and on critical integrity
// findings, connections of blocked IPs recorded, 5 s per capture.
type Config struct {
	// Timeout bounds one capture; whatever was collected by then is kept and
	// the snapshot is marked incomplete. Default 5s.
	Timeout api.Duration `yaml:"timeout"`
	// MaxProcesses caps the processes recorded (default 4096).
	MaxProcesses int `yaml:"max_processes"`
	// MaxConnections caps the connections and the listening sockets
	// recorded, each (default 4096).
	MaxConnections int `yaml:"max_connections"`
	// MaxCmdline caps the bytes of one command line (default 1024).
	MaxCmdline int `yaml:"max_cmdline"`
	// OnLockdown captures automatically when a lockdown starts (default true).
	OnLockdown *bool `yaml:"on_lockdown"`
	// OnCritical captures automatically when a critical integrity finding
	// arrives (default true).
	OnCritical *bool `yaml:"on_critical"`
	// BlockConnections records a blocked IP's current connections with the
	// block decision (default true).
	BlockConnections *bool `yaml:"block_connections"`
	// BlockTimeout bounds the connection lookup for one block (default 2s).
	BlockTimeout api.Duration `yaml:"block_timeout"`
}

var (
	// ErrNotFound: no evidence file with that ID.
	ErrNotFound = errors.New("evidence not found")
	// ErrBadID: the ID is not one this package produces (hostile paths end here).
	ErrBadID = errors.New("invalid evidence id")
	// ErrTampered: the file's hash no longer matches the recorded one.
	ErrTampered = errors.New("evidence hash mismatch")
	// ErrBusy: another capture is running and the context ended while waiting.
	ErrBusy = errors.New("another evidence capture is running")
)

// Validate reports the first invalid knob.
func (c Config) Validate() error {
	switch {
	case c.Timeout != 0 && (c.Timeout.D() < 100*time.Millisecond || c.Timeout.D() > 5*time.Minute):
		return fmt.Errorf("timeout: %v out of range 100ms..5m (write a unit: 5s)", c.Timeout)
	case c.BlockTimeout != 0 && (c.BlockTimeout.D() < 100*time.Millisecond || c.BlockTimeout.D() > time.Minute):
		return fmt.Errorf("block_timeout: %v out of range 100ms..1m (write a unit: 2s)", c.BlockTimeout)
	case c.MaxProcesses < 0 || c.MaxProcesses > maxProcessesLimit:
		return fmt.Errorf("max_processes: %d out of range 0..%d", c.MaxProcesses, maxProcessesLimit)
	case c.MaxConnections < 0 || c.MaxConnections > maxConnectionsLimit:
		return fmt.Errorf("max_connections: %d out of range 0..%d", c.MaxConnections, maxConnectionsLimit)
	case c.MaxCmdline < 0 || c.MaxCmdline > maxCmdlineLimit:
		return fmt.Errorf("max_cmdline: %d out of range 0..%d", c.MaxCmdline, maxCmdlineLimit)
	}
	return nil
}

// WithDefaults returns c with zero values replaced by the defaults.
func (c Config) WithDefaults() Config {
	if c.Timeout == 0 {
		c.Timeout = api.Duration(DefaultTimeout)
	}
	if c.BlockTimeout == 0 {
		c.BlockTimeout = api.Duration(DefaultBlockTimeout)
	}
	if c.MaxProcesses == 0 {
		c.MaxProcesses = DefaultMaxProcesses
	}
	if c.MaxConnections == 0 {
		c.MaxConnections = DefaultMaxConnections
	}
	if c.MaxCmdline == 0 {
		c.MaxCmdline = DefaultMaxCmdline
	}
	t := true
	if c.OnLockdown == nil {
		c.OnLockdown = &t
	}
	if c.OnCritical == nil {
		c.OnCritical = &t
	}
	if c.BlockConnections == nil {
		c.BlockConnections = &t
	}
	return c
}

// AutoOnLockdown reports whether a lockdown triggers a capture.
func (c Config) AutoOnLockdown() bool { return c.OnLockdown == nil || *c.OnLockdown }

// AutoOnCritical reports whether a critical integrity finding triggers a capture.
func (c Config) AutoOnCritical() bool { return c.OnCritical == nil || *c.OnCritical }

// RecordBlockConnections reports whether blocks record the IP's connections.
func (c Config) RecordBlockConnections() bool {
	return c.BlockConnections == nil || *c.BlockConnections
}
