package sources

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// fakeJournal puts a journalctl on PATH that serves the entries of a JSON
// lines file the test appends to: --after-cursor starts after the entry
// with that cursor, --lines=0 at the end, anything else at the start, and
// it follows the file like --follow.
func fakeJournal(t *testing.T) (journal string) {
	t.Helper()
	bin, dir := t.TempDir(), t.TempDir()
	journal = filepath.Join(dir, "journal.jsonl")
	if err := os.WriteFile(journal, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	script := `#!/bin/sh
f="$FAKE_JOURNAL"
start=1
for a in "$@"; do
  case "$a" in
  --lines=1) head -n 1 "$f"; exit 0;;
  --lines=0) start=$(( $(wc -l < "$f") + 1 ));;
  --after-cursor=*) c="${a#--after-cursor=}"; n=$(grep -n -F "\"__CURSOR\":\"$c\"" "$f" | head -n 1 | cut -d: -f1); start=$(( ${n:-0} + 1 ));;
  esac
done
exec tail -n +$start -f "$f"
`
	if err := os.WriteFile(filepath.Join(bin, "journalctl"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", bin+":"+os.Getenv("PATH"))
	t.Setenv("FAKE_JOURNAL", journal)
	return journal
}

var seq int

// logEntry appends an sshd entry; without unit it is one journald lost the
// unit of (its sender had exited), with _UID 0.
func logEntry(t *testing.T, journal, msg string, unit bool) {
	t.Helper()
	seq++
	u := `"_SYSTEMD_UNIT":"ssh.service",`
	if !unit {
		u = ""
	}
	line := fmt.Sprintf(`{"MESSAGE":%q,%s"SYSLOG_IDENTIFIER":"sshd","_UID":"0","__CURSOR":"s=fake;i=%d","__REALTIME_TIMESTAMP":"%d"}`,
		msg, u, seq, time.Now().UnixMicro())
	appendLines(t, journal, line)
}

// TestJournalRestartBlocksAtNth is TestRestartBlocksAtNth for the journal:
// the restart resumes from the saved cursor's mark and reads back the
// entries up to the saved cursor; one of the failures is an entry journald
// left without _SYSTEMD_UNIT.
func TestJournalRestartBlocksAtNth(t *testing.T) {
	journal := fakeJournal(t)
	st := &memStore{m: map[string][]byte{}}
	cfg := Config{} // the default: sshd on the journal
	logEntry(t, journal, "Server listening on 0.0.0.0 port 22.", true)

	l1 := start(t, cfg, st)
	waitFor(t, "journalctl running", func() bool { return l1.m.Status()[0].Available })
	logEntry(t, journal, failure, true)
	logEntry(t, journal, failure, false)
	logEntry(t, journal, failure, true)
	waitFor(t, "3 signals", func() bool { s, _, _ := l1.p.counts(); return s == 3 })
	l1.stop()

	l2 := start(t, cfg, st)
	waitFor(t, "3 read back", func() bool { _, r, _ := l2.p.counts(); return r == 3 })
	logEntry(t, journal, failure, false)
	waitFor(t, "the 4th", func() bool { s, _, _ := l2.p.counts(); return s == 1 })
	if _, _, d := l2.p.counts(); d != 0 {
		t.Fatal("blocked at the 4th failure")
	}
	logEntry(t, journal, failure, true)
	waitFor(t, "the 5th", func() bool { s, _, _ := l2.p.counts(); return s == 2 })
	if _, _, d := l2.p.counts(); d != 1 {
		t.Fatalf("%d decisions at the 5th failure, want 1", d)
	}
	if s := l2.m.Status()[0]; s.Lag == "" || s.Warning != "" {
		t.Errorf("status: lag %q, warning %q", s.Lag, s.Warning)
	}
}

// TestJournalSelectsNothing: a journal whose matches select no entry is
// reported with a warning until an entry comes.
func TestJournalSelectsNothing(t *testing.T) {
	journal := fakeJournal(t)
	l := start(t, Config{}, &memStore{m: map[string][]byte{}})
	waitFor(t, "the warning", func() bool { return l.m.Status()[0].Warning != "" })
	if s := l.m.Summary(); len(s.Warnings) != 1 {
		t.Errorf("summary %+v, want one warning", s)
	}
	logEntry(t, journal, failure, true)
	waitFor(t, "the warning cleared", func() bool { return l.m.Status()[0].Warning == "" })
}
