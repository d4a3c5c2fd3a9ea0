package hostcheck

import (
	"fmt"
	"os"
	"syscall"
)

// self checks parry's own files and table.
func (r *run) self(c *Checker) {
	if c.ConfigPath != "" {
		if fi, err := os.Stat(c.ConfigPath); err == nil {
			if fi.Mode().Perm()&0o022 != 0 {
				r.add(Finding{ID: "parry-config-writable", Severity: SevHigh, Path: c.ConfigPath,
					Message: fmt.Sprintf("parry's configuration is writable by non-root users (mode %04o): they could allowlist themselves", fi.Mode().Perm()),
					Fix:     fmt.Sprintf("chmod 0640 %s && chown root:parry %s", c.ConfigPath, c.ConfigPath)})
			}
			if st, ok := fi.Sys().(*syscall.Stat_t); ok && st.Uid != 0 {
				r.add(Finding{ID: "parry-config-owner", Severity: SevMedium, Path: c.ConfigPath,
					Message: fmt.Sprintf("parry's configuration is owned by uid %d, not root", st.Uid),
					Fix:     fmt.Sprintf("chown root:parry %s", c.ConfigPath)})
			}
		}
	}
	if c.StateDir != "" {
		if fi, err := os.Stat(c.StateDir); err == nil && fi.Mode().Perm()&0o007 != 0 {
			r.add(Finding{ID: "parry-state-open", Severity: SevHigh, Path: c.StateDir,
				Message: fmt.Sprintf("parry's state (store, audit log, evidence) is accessible to every user (mode %04o)", fi.Mode().Perm()),
				Fix:     fmt.Sprintf("chmod 0750 %s", c.StateDir)})
		}
	}
	if c.SocketPath != "" {
		if fi, err := os.Stat(c.SocketPath); err == nil && fi.Mode().Perm()&0o002 != 0 {
			r.add(Finding{ID: "parry-socket-open", Severity: SevHigh, Path: c.SocketPath,
				Message: fmt.Sprintf("parry's control socket is writable by every user (mode %04o)", fi.Mode().Perm()),
				Fix:     "set control.socket_mode: \"0660\" in parry.yaml (or SocketMode=0660 in parry.socket) and restart parry"})
		}
	}
	if c.TablePresent != nil {
		table := c.Table
		if table == "" {
			table = "inet parry"
		}
		ok, err := c.TablePresent()
		switch {
		case err != nil:
			r.add(Finding{ID: "parry-table-unknown", Severity: SevMedium, Path: table,
				Message: fmt.Sprintf("could not check parry's nftables table: %v", err),
				Fix:     "run parry check as root, or see journalctl -u parry"})
		case !ok:
			r.add(Finding{ID: "parry-table-missing", Severity: SevCritical, Path: table,
				Message: "parry's nftables table is missing or incomplete: blocks are not enforced",
				Fix:     "systemctl restart parry (the daemon re-creates its table); find what flushed it (nft flush ruleset, another firewall manager)"})
		}
	}
}
