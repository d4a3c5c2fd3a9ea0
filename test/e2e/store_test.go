package e2e

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/parryhq/parry/test/netns"
	"github.com/parryhq/parry/test/parrybin"
)

// runParryd runs parryd to completion in the daemon's namespace with its
// files and extra flags (bounded to 60 s) and returns its output and exit
// status.
func (d *daemon) runParryd(flags ...string) (string, int) {
	d.t.Helper()
	parryd, _ := parrybin.Build(d.t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	args := append([]string{"--state-dir", d.dir, "--socket", d.sock, "--table", d.table}, d.extra...)
	cmd := d.ns.Command(ctx, parryd, append(args, flags...)...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		return out.String(), ee.ExitCode()
	case err != nil:
		d.t.Fatalf("run parryd: %v", err)
	}
	return out.String(), 0
}

// corruptStore overwrites every page of store.db after the two meta pages
// with random bytes.
func corruptStore(t *testing.T, dir string) {
	t.Helper()
	path := filepath.Join(dir, "store.db")
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(5, 6))
	for i := 2 * os.Getpagesize(); i < len(b); i++ {
		b[i] = byte(rng.Uint32())
	}
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// exitStoreCorrupt is agent.ExitStoreCorrupt, the status systemd's unit
// does not restart on.
const exitStoreCorrupt = 65

func TestCorruptStoreRefusesStart(t *testing.T) {
	p := netns.NewPair(t)
	d := newDaemon(t, p.Host)
	d.start()
	d.mustParry("block", "203.0.113.7", "--for", "1h")
	d.stop()
	corruptStore(t, d.dir)
	before, _ := os.ReadFile(filepath.Join(d.dir, "store.db"))

	out, code := d.runParryd()
	t.Logf("parryd:\n%s", out)
	if code != exitStoreCorrupt {
		t.Fatalf("parryd on a corrupt store exited %d, want %d:\n%s", code, exitStoreCorrupt, out)
	}
	for _, want := range []string{"store.db is corrupt", "parryd --rebuild-store", "mv ", "audit.log", "stay in force until their timeouts"} {
		if !strings.Contains(out, want) {
			t.Errorf("message lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "panic") || strings.Contains(out, "goroutine ") {
		t.Errorf("parryd panicked:\n%s", out)
	}
	if _, ok := kernelElems(t, p.Host, d.table)["203.0.113.7"]; !ok {
		t.Error("the block left the kernel; it must stay in force")
	}
	if after, _ := os.ReadFile(filepath.Join(d.dir, "store.db")); !bytes.Equal(before, after) {
		t.Error("parryd changed the corrupt store")
	}
}
