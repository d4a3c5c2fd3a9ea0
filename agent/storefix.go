package agent

import (
	"errors"
	"fmt"
	"path/filepath"
	"strings"

	"github.com/parryhq/parry/agent/store"
)

// ExitStoreCorrupt is parryd's exit status when it will not start on a
// corrupt store. systemd/parry.service lists it in RestartPreventExitStatus=,
// so a corrupt store stops the service instead of a restart loop.
const ExitStoreCorrupt = 65 // EX_DATAERR in sysexits.h

// StoreCorruptError is the start failure on a corrupt store.db: what was
// found and what the admin can do, in words. It unwraps to store.ErrCorrupt.
type StoreCorruptError struct {
	Path     string // the store file
	StateDir string
	Flags    string // parryd's flags that name the files (--config, --state-dir, --table), to repeat
	Err      error  // the *store.CorruptError or load error
}

func (e *StoreCorruptError) Error() string {
	audit := filepath.Join(e.StateDir, "audit.log")
	return fmt.Sprintf(`%v
parryd will not start on a corrupt store. Nothing was changed: blocks already in the kernel
stay in force until their timeouts, and %s has the history of every decision.
To rebuild the store from the kernel's table and the audit log (the corrupt file is kept aside):
    parryd --rebuild-store%s
or to start with an empty store (blocks in the kernel are then removed at start):
    mv %s %s
then start parry again (systemctl start parry).`,
		e.Err, audit, e.flagHint(), shellQuote(e.Path), shellQuote(e.Path+".corrupt"))
}

func (e *StoreCorruptError) flagHint() string {
	if e.Flags == "" {
		return ""
	}
	return " " + e.Flags
}

func (e *StoreCorruptError) Unwrap() error { return e.Err }

// corruptStore wraps err in a StoreCorruptError when it says the store is
// corrupt.
func (m *Main) corruptStore(cfg Config, err error) error {
	if !errors.Is(err, store.ErrCorrupt) {
		return err
	}
	return &StoreCorruptError{Path: filepath.Join(cfg.StateDir, "store.db"), StateDir: cfg.StateDir, Flags: m.fileFlags(), Err: err}
}

// fileFlags are the flags of this parryd that choose its files and table,
// quoted for a shell, to repeat in a suggested command.
func (m *Main) fileFlags() string {
	var s []string
	for _, f := range []struct{ name, v string }{{"--config", m.ConfigPath}, {"--state-dir", m.StateDir}, {"--table", m.Table}} {
		if f.v != "" {
			s = append(s, f.name, shellQuote(f.v))
		}
	}
	return strings.Join(s, " ")
}

// shellQuote quotes s for a POSIX shell unless it is plainly safe.
func shellQuote(s string) string {
	safe := s != ""
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("/._-+=:,@", r)) {
			safe = false
			break
		}
	}
	if safe {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
