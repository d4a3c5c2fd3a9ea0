package cli

import (
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/parryhq/parry/agent/audit"
)

// rotatedLog writes a log that rotated into several segments, with the
// oldest removed by retention.
func rotatedLog(t *testing.T) (string, *audit.Log) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "audit.log")
	l, err := audit.OpenConfig(path, audit.Config{MaxSize: 4096, Keep: 2}, time.Now, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 200 {
		if err := l.Append("block", map[string]any{"i": i, "targets": []string{"203.0.113.7"}}); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.Sync(); err != nil {
		t.Fatal(err)
	}
	if err := l.Maintain(); err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	return path, l
}

func TestAuditVerifyLogWalksSegments(t *testing.T) {
	path, _ := rotatedLog(t)
	var stdout, stderr bytes.Buffer
	code := Main(context.Background(), []string{"audit", "verify", "--log", path}, strings.NewReader(""), &stdout, &stderr)
	out := stdout.String()
	if code != ExitOK || !strings.Contains(out, "audit log ok: ") || !strings.Contains(out, " segments, chain intact (seq ") ||
		!strings.Contains(out, "gone by retention (recorded in the log): ") || !strings.Contains(out, "(keep, recorded at seq ") {
		t.Fatalf("exit %d\nstdout %s\nstderr %s", code, out, stderr.String())
	}
	// The oldest segment left, deleted by hand: a break, named.
	segs, err := audit.Segments(path)
	if err != nil {
		t.Fatal(err)
	}
	os.Remove(filepath.Join(filepath.Dir(path), segs[0].Name))
	stdout.Reset()
	stderr.Reset()
	code = Main(context.Background(), []string{"audit", "verify", "--log", path}, strings.NewReader(""), &stdout, &stderr)
	want := "audit log BROKEN at line 1 of " + segs[1].Name + ": "
	if code != ExitFailed || !strings.Contains(stderr.String(), want) || !strings.Contains(stderr.String(), "outside retention") {
		t.Fatalf("exit %d, stderr %q; want %q", code, stderr.String(), want)
	}
	// One old segment alone checks its own chain.
	code = Main(context.Background(), []string{"audit", "verify", "--log", filepath.Join(filepath.Dir(path), segs[1].Name)}, strings.NewReader(""), io.Discard, io.Discard)
	if code != ExitOK {
		t.Fatalf("one segment: exit %d", code)
	}
}
