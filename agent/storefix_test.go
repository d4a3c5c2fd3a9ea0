package agent

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/parryhq/parry/agent/store"
)

// TestUnitDoesNotRestartOnCorruptStore: the unit's RestartPreventExitStatus
// names the status parryd exits with on a corrupt store.
func TestUnitDoesNotRestartOnCorruptStore(t *testing.T) {
	b, err := os.ReadFile("../systemd/parry.service")
	if err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprintf("RestartPreventExitStatus=%d", ExitStoreCorrupt)
	for _, line := range strings.Split(string(b), "\n") {
		if strings.TrimSpace(line) == want {
			return
		}
	}
	t.Fatalf("systemd/parry.service has no %q line: a corrupt store would restart in a loop", want)
}

func TestStoreCorruptMessage(t *testing.T) {
	m := &Main{StateDir: "/srv/parry state", Table: "parry"}
	cfg := DefaultConfig()
	cfg.StateDir = m.StateDir
	err := m.corruptStore(cfg, &store.CorruptError{Path: "/srv/parry state/store.db", Problem: "truncated"})
	var sce *StoreCorruptError
	if !errors.As(err, &sce) || !errors.Is(err, store.ErrCorrupt) {
		t.Fatalf("not a StoreCorruptError unwrapping to ErrCorrupt: %v", err)
	}
	msg := err.Error()
	for _, want := range []string{
		"parryd --rebuild-store --state-dir '/srv/parry state' --table parry",
		"mv '/srv/parry state/store.db' '/srv/parry state/store.db.corrupt'",
		"/srv/parry state/audit.log",
	} {
		if !strings.Contains(msg, want) {
			t.Errorf("message lacks %q:\n%s", want, msg)
		}
	}
	if other := m.corruptStore(cfg, errors.New("x")); errors.As(other, &sce) {
		t.Error("an unrelated error became a StoreCorruptError")
	}
}
