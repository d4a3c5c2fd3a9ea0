// Package api is the vocabulary of parryd's control protocol
// (docs/protocol.md): the answers the daemon sends and the CLI and other
// clients read (Status, BlockInfo, Outcome, lockdown, evidence, integrity,
// signal, host check and incident report answers), the error type with its
// stable codes, and the two
// pieces of syntax both ends must agree on: targets (ParseTarget,
// FormatTarget) and durations (ParseDuration, FormatDuration, Duration).
//
// It is a leaf: it imports the standard library and go.yaml.in/yaml/v3
// (for Duration in config files) and nothing else, so that the parry CLI,
// which reads the daemon through this package and agent/client, does not
// link the daemon's dependencies (bbolt, nats, prometheus, gopsutil,
// fsnotify, go-systemd, nftables). cmd/parry's TestCLIDoesNotLinkTheDaemon
// keeps it so.
//
// Where a daemon package owns one of these types (agent/fleet's Status,
// agent/evidence's Snapshot and Record, agent/hostcheck's Report,
// agent/report's Report), the definition is here and the package names it
// with an alias.
//
// One deliberate edge: the config sections of response, integrity and the
// agent's subpackages use Duration from here, so that every section reads
// "7d" and "2w" the same way. Importing this package brings nothing else
// with it.
//
// Where the daemon's own type carries more than the wire (enforce.Outcome
// keeps the applied prefixes for observers; integrity.Finding has methods
// of its own), this package has the wire twin with the same JSON, and a
// test in agent encodes the daemon's value and compares it byte for byte
// with the twin's.
package api
