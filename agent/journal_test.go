package agent

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coreos/go-systemd/v22/journal"
	"github.com/google/go-cmp/cmp"
)

type journalEntry struct {
	Message  string
	Priority journal.Priority
	Fields   map[string]string
}

// fakeJournal records entries; fail makes Send return an error.
type fakeJournal struct {
	mu      sync.Mutex
	entries []journalEntry
	fail    error
}

func (f *fakeJournal) send(msg string, p journal.Priority, fields map[string]string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fail != nil {
		return f.fail
	}
	f.entries = append(f.entries, journalEntry{msg, p, fields})
	return nil
}

func TestJournalHandlerFields(t *testing.T) {
	fj := &fakeJournal{}
	log := slog.New(NewJournalHandler(JournalOptions{Send: fj.send})).With("source", "cli")

	log.WithGroup("req").Info("blocked",
		"action", "block", "target", "203.0.113.7/32", "reason", "ssh brute force",
		"for", 90*time.Minute, "until", time.Date(2026, 11, 27, 1, 0, 0, 0, time.UTC),
		slog.Group("peer", "uid", 0, "pid", 42), "err", errors.New("none"),
		"odd-key.name", "x", slog.Attr{})
	log.Debug("not logged: below Info")
	log.Error("failed", "action", "lockdown")
	log.Info("audit", "event", "block", "targets", []string{"192.0.2.2/32", "2001:db8::/48"})

	want := []journalEntry{
		{"blocked", journal.PriInfo, map[string]string{
			"PARRY_SOURCE":           "cli",
			"PARRY_REQ_ACTION":       "block",
			"PARRY_REQ_TARGET":       "203.0.113.7/32",
			"PARRY_REQ_REASON":       "ssh brute force",
			"PARRY_REQ_FOR":          "1h30m0s",
			"PARRY_REQ_UNTIL":        "2026-11-27T01:00:00Z",
			"PARRY_REQ_PEER_UID":     "0",
			"PARRY_REQ_PEER_PID":     "42",
			"PARRY_REQ_ERR":          "none",
			"PARRY_REQ_ODD_KEY_NAME": "x",
			"PARRY_LEVEL":            "INFO",
			"SYSLOG_IDENTIFIER":      "parryd",
		}},
		{"failed", journal.PriErr, map[string]string{
			"PARRY_SOURCE":      "cli",
			"PARRY_ACTION":      "lockdown",
			"PARRY_LEVEL":       "ERROR",
			"SYSLOG_IDENTIFIER": "parryd",
		}},
		{"audit", journal.PriInfo, map[string]string{
			"PARRY_SOURCE":      "cli",
			"PARRY_EVENT":       "block",
			"PARRY_TARGETS":     "192.0.2.2/32 2001:db8::/48",
			"PARRY_TARGET":      "192.0.2.2/32 2001:db8::/48",
			"PARRY_LEVEL":       "INFO",
			"SYSLOG_IDENTIFIER": "parryd",
		}},
	}
	if diff := cmp.Diff(want, fj.entries); diff != "" {
		t.Errorf("journal entries (-want +got):\n%s", diff)
	}
	for _, e := range fj.entries {
		for k := range e.Fields {
			if !validJournalKey(k) {
				t.Errorf("field name %q would be rejected by journald", k)
			}
		}
	}
}

func validJournalKey(k string) bool {
	if k == "" || len(k) > 64 || k[0] == '_' || (k[0] >= '0' && k[0] <= '9') {
		return false
	}
	return strings.Trim(k, "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_") == ""
}

func TestJournalHandlerLevelsAndSource(t *testing.T) {
	fj := &fakeJournal{}
	h := NewJournalHandler(JournalOptions{Send: fj.send, Level: slog.LevelDebug, AddSource: true, Identifier: "parry-test"})
	log := slog.New(h)
	log.Debug("d")
	log.Info("i")
	log.Warn("w")
	log.Error("e")
	got := make([]journal.Priority, 0, len(fj.entries))
	for _, e := range fj.entries {
		got = append(got, e.Priority)
	}
	if diff := cmp.Diff([]journal.Priority{journal.PriDebug, journal.PriInfo, journal.PriWarning, journal.PriErr}, got); diff != "" {
		t.Errorf("priorities (-want +got):\n%s", diff)
	}
	e := fj.entries[0]
	if !strings.HasSuffix(e.Fields["CODE_FILE"], "journal_test.go") || e.Fields["CODE_LINE"] == "" ||
		!strings.Contains(e.Fields["CODE_FUNC"], "TestJournalHandlerLevelsAndSource") {
		t.Errorf("source fields = %q %q %q", e.Fields["CODE_FILE"], e.Fields["CODE_LINE"], e.Fields["CODE_FUNC"])
	}
	if e.Fields["SYSLOG_IDENTIFIER"] != "parry-test" {
		t.Errorf("SYSLOG_IDENTIFIER = %q", e.Fields["SYSLOG_IDENTIFIER"])
	}
}

func TestJournalHandlerFallback(t *testing.T) {
	down := errors.New("journald gone")
	fj := &fakeJournal{fail: down}

	var buf bytes.Buffer
	fb := slog.NewTextHandler(&buf, &slog.HandlerOptions{
		ReplaceAttr: func(_ []string, a slog.Attr) slog.Attr {
			if a.Key == slog.TimeKey {
				return slog.Attr{}
			}
			return a
		},
	})
	log := slog.New(NewJournalHandler(JournalOptions{Send: fj.send, Fallback: fb}))
	log.With("source", "cli").Info("blocked", "action", "block")
	if got, want := buf.String(), "level=INFO msg=blocked source=cli action=block\n"; got != want {
		t.Errorf("fallback got %q, want %q", got, want)
	}

	// Without a fallback the error reaches the caller of Handle.
	h := NewJournalHandler(JournalOptions{Send: fj.send})
	err := h.Handle(context.Background(), slog.NewRecord(time.Now(), slog.LevelInfo, "x", 0))
	if !errors.Is(err, down) {
		t.Errorf("Handle error = %v, want %v", err, down)
	}
}

func TestJournalHandlerConcurrent(t *testing.T) {
	fj := &fakeJournal{}
	log := slog.New(NewJournalHandler(JournalOptions{Send: fj.send})).With("source", "test")
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			l := log.With("worker", i)
			for range 50 {
				l.Info("x", "action", "block")
			}
		}()
	}
	wg.Wait()
	if len(fj.entries) != 400 {
		t.Fatalf("got %d entries, want 400", len(fj.entries))
	}
	for _, e := range fj.entries {
		if e.Fields["PARRY_SOURCE"] != "test" || e.Fields["PARRY_WORKER"] == "" {
			t.Fatalf("entry fields %v", e.Fields)
		}
	}
}
