package evidence

import "github.com/parryhq/parry/agent/api"

// The snapshot's types are the protocol's (agent/api), so that the CLI
// reads them without linking the collector.
type (
	// Snapshot is one capture of the host.
	Snapshot = api.Snapshot
	// Load is the load average.
	Load = api.Load
	// User is one logged-in session.
	User = api.Session
	// Process is one process as seen in /proc.
	Process = api.Process
	// Connection is one inet socket with its owning process, if known.
	Connection = api.Connection
	// Block is an active block, as the agent knows it.
	Block = api.SnapshotBlock
	// Lockdown is the active lockdown, as the agent knows it.
	Lockdown = api.SnapshotLockdown
	// Finding is an open integrity finding, as the agent knows it.
	Finding = api.SnapshotFinding
	// Record describes one stored evidence file.
	Record = api.EvidenceRecord
)
