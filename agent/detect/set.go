package detect

import (
	"embed"
	"fmt"
	"io/fs"
	"path"
	"slices"
	"strings"
)

//go:embed builtin/*.yaml
var builtinFS embed.FS

// BuiltinSpecs returns the built-in detectors as written, sorted by name.
func BuiltinSpecs() ([]Spec, error) {
	names, err := fs.Glob(builtinFS, "builtin/*.yaml")
	if err != nil {
		return nil, fmt.Errorf("builtin detectors: %w", err)
	}
	slices.Sort(names)
	specs := make([]Spec, 0, len(names))
	for _, n := range names {
		b, err := builtinFS.ReadFile(n)
		if err != nil {
			return nil, fmt.Errorf("builtin detectors: %w", err)
		}
		s, err := Decode(n, b)
		if err != nil {
			return nil, err
		}
		if want := strings.TrimSuffix(path.Base(n), ".yaml"); s.Name != want {
			return nil, fmt.Errorf("builtin detector %s: name %q, want %q", n, s.Name, want)
		}
		specs = append(specs, s)
	}
	return specs, nil
}

// Builtin compiles the built-in detectors into a Set.
func Builtin() (*Set, error) {
	specs, err := BuiltinSpecs()
	if err != nil {
		return nil, err
	}
	ds := make([]*Detector, 0, len(specs))
	for _, s := range specs {
		d, err := Compile(s)
		if err != nil {
			return nil, fmt.Errorf("builtin: %w", err)
		}
		ds = append(ds, d)
	}
	return NewSet(ds...), nil
}

// Set is an ordered list of detectors. It is immutable and safe for
// concurrent use.
type Set struct{ ds []*Detector }

// NewSet makes a set; the first detector that matches or ignores a line
// decides it.
func NewSet(ds ...*Detector) *Set { return &Set{ds: slices.Clone(ds)} }

// With returns a set where each of ds replaces the detector of the same
// name, or is appended: a user's detector called "sshd" replaces the
// built-in one.
func (s *Set) With(ds ...*Detector) *Set {
	out := slices.Clone(s.ds)
	for _, d := range ds {
		if i := slices.IndexFunc(out, func(o *Detector) bool { return o.name == d.name }); i >= 0 {
			out[i] = d
		} else {
			out = append(out, d)
		}
	}
	return &Set{ds: out}
}

// Detectors returns the set's detectors in order.
func (s *Set) Detectors() []*Detector { return slices.Clone(s.ds) }

// Get returns the detector called name, or nil.
func (s *Set) Get(name string) *Detector {
	for _, d := range s.ds {
		if d.name == name {
			return d
		}
	}
	return nil
}

// ForFile returns the detectors whose Files globs match path: a file
// source calls it once and matches every line of the file with the result.
func (s *Set) ForFile(path string) *Set {
	var ds []*Detector
	for _, d := range s.ds {
		if d.AppliesToFile(path) {
			ds = append(ds, d)
		}
	}
	return &Set{ds: ds}
}

// Journal returns what a journal source must select so that every detector
// of the set sees its lines: the exact unit names (globs cannot be given to
// journalctl as matches; their detectors should also list identifiers) and
// the identifiers, each sorted and without duplicates.
func (s *Set) Journal() (units, identifiers []string) {
	for _, d := range s.ds {
		for _, u := range d.sources.Units {
			if !strings.ContainsAny(u, "*?") {
				units = append(units, u)
			}
		}
		identifiers = append(identifiers, d.sources.Identifiers...)
	}
	slices.Sort(units)
	slices.Sort(identifiers)
	return slices.Compact(units), slices.Compact(identifiers)
}

// Match runs the detectors over a line in order. The first one that
// matches, ignores or refuses the line decides; otherwise the result is
// Missed if any detector read the line, else NotApplicable.
func (s *Set) Match(l Line) Result {
	out := Result{Outcome: NotApplicable}
	for _, d := range s.ds {
		r := d.Match(l)
		switch r.Outcome {
		case Matched, Ignored, Refused:
			return r
		case Missed:
			out.Outcome = Missed
		}
	}
	return out
}
