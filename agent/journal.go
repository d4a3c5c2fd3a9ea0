package agent

import (
	"context"
	"fmt"
	"log/slog"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/coreos/go-systemd/v22/journal"
)

// JournalSender sends one entry to the journal; journal.Send is the real one.
type JournalSender func(message string, priority journal.Priority, fields map[string]string) error

// JournalOptions configures a JournalHandler. The zero value logs at Info
// and above to the local journal as "parryd".
type JournalOptions struct {
	// Level is the minimum level logged; nil means slog.LevelInfo.
	Level slog.Leveler
	// AddSource adds CODE_FILE, CODE_LINE and CODE_FUNC from the caller.
	AddSource bool
	// Identifier is SYSLOG_IDENTIFIER; empty means "parryd".
	Identifier string
	// Send delivers entries; nil means journal.Send (tests inject a fake).
	Send JournalSender
	// Fallback receives the records the journal refused (journald gone,
	// socket full), so that nothing is lost silently. nil drops them.
	Fallback slog.Handler
}

// JournalHandler is a slog.Handler that writes each record to the systemd
// journal as one entry with structured fields, so that for example
//
//	logger.Info("blocked", "action", "block", "target", "203.0.113.7/32",
//		"reason", "ssh brute force", "source", "cli")
//
// can be found with `journalctl -u parry PARRY_ACTION=block`. The message
// becomes MESSAGE, the level becomes PRIORITY, and every attribute becomes a
// field named PARRY_ plus its key (groups joined with _) in upper case,
// with anything outside [A-Z0-9_] replaced by _: "action" is PARRY_ACTION,
// "req.peer" PARRY_REQ_PEER. A []string value is joined with spaces, and a
// top-level "targets" list is also given as PARRY_TARGET, so that
// `journalctl PARRY_TARGET=203.0.113.7/32` finds one-target decisions.
//
// A JournalHandler is safe for concurrent use.
type JournalHandler struct {
	opts   JournalOptions
	fields map[string]string // from WithAttrs, already named
	prefix string            // from WithGroup: "PARRY_G1_G2_"
}

var _ slog.Handler = (*JournalHandler)(nil)

// NewJournalHandler returns a handler that writes to the journal. Use it
// when JournalAvailable reports true; otherwise a slog.TextHandler on stderr
// is the better choice.
func NewJournalHandler(opts JournalOptions) *JournalHandler {
	if opts.Level == nil {
		opts.Level = slog.LevelInfo
	}
	if opts.Identifier == "" {
		opts.Identifier = "parryd"
	}
	if opts.Send == nil {
		opts.Send = journal.Send
	}
	return &JournalHandler{opts: opts, fields: map[string]string{}, prefix: "PARRY_"}
}

// JournalAvailable reports whether the process runs under systemd with its
// stderr connected to the journal (systemd sets JOURNAL_STREAM for that),
// which is when structured entries are worth sending.
func JournalAvailable() bool {
	ok, err := journal.StderrIsJournalStream()
	return err == nil && ok && journal.Enabled()
}

// Enabled reports whether records at level are logged.
func (h *JournalHandler) Enabled(_ context.Context, level slog.Level) bool {
	return level >= h.opts.Level.Level()
}

// Handle sends the record as one journal entry.
func (h *JournalHandler) Handle(ctx context.Context, r slog.Record) error {
	fields := make(map[string]string, len(h.fields)+r.NumAttrs()+4)
	for k, v := range h.fields {
		fields[k] = v
	}
	r.Attrs(func(a slog.Attr) bool {
		addField(fields, h.prefix, a)
		return true
	})
	// Decisions log their targets as a list; PARRY_TARGET makes them
	// searchable under the same name as single-target entries.
	if t, ok := fields["PARRY_TARGETS"]; ok {
		if _, dup := fields["PARRY_TARGET"]; !dup {
			fields["PARRY_TARGET"] = t
		}
	}
	fields["SYSLOG_IDENTIFIER"] = h.opts.Identifier
	fields["PARRY_LEVEL"] = r.Level.String()
	if h.opts.AddSource && r.PC != 0 {
		f, _ := runtime.CallersFrames([]uintptr{r.PC}).Next()
		fields["CODE_FILE"] = f.File
		fields["CODE_LINE"] = strconv.Itoa(f.Line)
		fields["CODE_FUNC"] = f.Function
	}
	if err := h.opts.Send(r.Message, priority(r.Level), fields); err != nil {
		if h.opts.Fallback != nil && h.opts.Fallback.Enabled(ctx, r.Level) {
			return h.opts.Fallback.Handle(ctx, r)
		}
		return fmt.Errorf("journal send: %w", err)
	}
	return nil
}

// WithAttrs returns a handler that adds attrs to every entry.
func (h *JournalHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	if len(attrs) == 0 {
		return h
	}
	h2 := h.clone()
	for _, a := range attrs {
		addField(h2.fields, h2.prefix, a)
	}
	if h.opts.Fallback != nil {
		h2.opts.Fallback = h.opts.Fallback.WithAttrs(attrs)
	}
	return h2
}

// WithGroup returns a handler that names later attributes PARRY_NAME_KEY.
func (h *JournalHandler) WithGroup(name string) slog.Handler {
	if name == "" {
		return h
	}
	h2 := h.clone()
	h2.prefix = h.prefix + fieldName(name) + "_"
	if h.opts.Fallback != nil {
		h2.opts.Fallback = h.opts.Fallback.WithGroup(name)
	}
	return h2
}

func (h *JournalHandler) clone() *JournalHandler {
	h2 := *h
	h2.fields = make(map[string]string, len(h.fields))
	for k, v := range h.fields {
		h2.fields[k] = v
	}
	return &h2
}

// addField flattens one attribute (and groups within it) into fields.
func addField(fields map[string]string, prefix string, a slog.Attr) {
	a.Value = a.Value.Resolve()
	if a.Equal(slog.Attr{}) {
		return
	}
	if a.Value.Kind() == slog.KindGroup {
		p := prefix
		if a.Key != "" {
			p = prefix + fieldName(a.Key) + "_"
		}
		for _, ga := range a.Value.Group() {
			addField(fields, p, ga)
		}
		return
	}
	fields[journalKey(prefix+fieldName(a.Key))] = valueString(a.Value)
}

// fieldName maps a slog key to the journal's alphabet: upper case letters,
// digits and underscores.
func fieldName(key string) string {
	return strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z':
			return r - 'a' + 'A'
		case r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '_':
			return r
		default:
			return '_'
		}
	}, key)
}

// journalKey keeps a field name within journald's 64-byte limit.
func journalKey(name string) string {
	const maxKey = 64
	if len(name) > maxKey {
		return name[:maxKey]
	}
	return name
}

func valueString(v slog.Value) string {
	switch v.Kind() {
	case slog.KindTime:
		return v.Time().UTC().Format(time.RFC3339Nano)
	case slog.KindDuration:
		return v.Duration().String()
	case slog.KindAny:
		switch x := v.Any().(type) {
		case error:
			return x.Error()
		case []string:
			return strings.Join(x, " ")
		case fmt.Stringer:
			return x.String()
		}
	}
	return v.String()
}

// priority maps slog levels to syslog priorities.
func priority(l slog.Level) journal.Priority {
	switch {
	case l >= slog.LevelError:
		return journal.PriErr
	case l >= slog.LevelWarn:
		return journal.PriWarning
	case l >= slog.LevelInfo:
		return journal.PriInfo
	default:
		return journal.PriDebug
	}
}
