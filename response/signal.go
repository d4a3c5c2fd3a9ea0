package response

import (
	"fmt"
	"unicode/utf8"
)

// Limits on the fields of a signal; longer ones are refused, not truncated.
const (
	MaxKindLen   = 64
	MaxFieldLen  = 256  // user, source
	MaxTextLen   = 4096 // detail, path
	MaxAttrs     = 32
	MaxAttrKey   = 64
	MaxAttrValue = 1024
)

// ValidateSignal checks a signal before it is counted: a kind of letters,
// digits and _ . : - (at most 64), a known severity, bounded valid UTF-8
// text. The error wraps ErrInvalidSignal and names the field.
func ValidateSignal(s Signal) error {
	if s.Kind == "" || len(s.Kind) > MaxKindLen {
		return sigErr("kind", "must be 1..%d characters", MaxKindLen)
	}
	for _, c := range s.Kind {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '.' || c == ':' || c == '-') {
			return sigErr("kind", "%q: only letters, digits and _ . : - are allowed", s.Kind)
		}
	}
	if _, ok := severities[s.Severity]; !ok {
		return sigErr("severity", "%q is not one of low, medium, high, critical", s.Severity)
	}
	for _, f := range []struct {
		name, v string
		max     int
	}{{"user", s.User, MaxFieldLen}, {"source", s.Source, MaxFieldLen}, {"detail", s.Detail, MaxTextLen}, {"path", s.Path, MaxTextLen}} {
		if err := checkText(f.name, f.v, f.max); err != nil {
			return err
		}
	}
	if len(s.Attrs) > MaxAttrs {
		return sigErr("attrs", "%d entries, at most %d", len(s.Attrs), MaxAttrs)
	}
	for k, v := range s.Attrs {
		if err := checkText("attrs key", k, MaxAttrKey); err != nil {
			return err
		}
		if err := checkText("attrs["+k+"]", v, MaxAttrValue); err != nil {
			return err
		}
	}
	return nil
}

func checkText(field, v string, max int) error {
	if len(v) > max {
		return sigErr(field, "%d bytes, at most %d", len(v), max)
	}
	if !utf8.ValidString(v) {
		return sigErr(field, "not valid UTF-8")
	}
	return nil
}

func sigErr(field, format string, args ...any) error {
	return fmt.Errorf("signal %s: %w: %s", field, ErrInvalidSignal, fmt.Sprintf(format, args...))
}
