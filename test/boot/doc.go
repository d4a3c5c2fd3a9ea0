// Package boot holds parry's install test: it builds the .deb, boots a
// Debian 12 system with systemd-nspawn in a throwaway network namespace,
// installs the package there and drives the service the way an admin
// would (see docs/install.md). It also checks the unit files with
// systemd-analyze. Everything runs inside namespaces the test creates; the
// firewall of the machine's own network namespace is never touched.
package boot
