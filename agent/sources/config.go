// Package sources runs parry's log sources in the daemon: the systemd
// journal and log files (agent/logsource) read through the detectors
// (agent/detect). Each line a detector matches becomes one signal handed to
// the policy (Handler); each source's position is kept in the store, so a
// restart resumes where it stopped and reads back the longest policy window
// to rebuild the counts it lost (docs/sources.md, "Positions and
// restarts"). It never touches the store's blocks or the kernel.
package sources

import (
	"errors"
	"fmt"
	"path/filepath"
	"slices"

	"github.com/parryhq/parry/agent/api"
	"github.com/parryhq/parry/agent/detect"
	"github.com/parryhq/parry/agent/logsource"
)

// Config is the sources: section of parry.yaml. Its zero value is the
// default: the sshd detector on the journal.
type Config struct {
	Journal JournalConfig `yaml:"journal"`
	Files   []FileConfig  `yaml:"files"`
	// Detectors are the user's own, in the built-in format; one with the
	// name of a built-in detector replaces it.
	Detectors []detect.Spec `yaml:"detectors"`
	// SilentAfter warns (status, journal, metrics) when a source has read
	// nothing for this long; 0: never.
	SilentAfter api.Duration `yaml:"silent_after"`
}

// JournalConfig is the journal source.
type JournalConfig struct {
	Enabled   *bool    `yaml:"enabled"`   // default true
	Detectors []string `yaml:"detectors"` // default [sshd]
	// Journalctl is the program run (looked up in PATH); default
	// journalctl. For tests.
	Journalctl string `yaml:"journalctl"`
}

// FileConfig is one file source.
type FileConfig struct {
	Name string `yaml:"name"` // default the path
	Path string `yaml:"path"` // absolute; need not exist yet
	// Detectors it feeds; default the detectors whose files: globs match
	// the path.
	Detectors []string `yaml:"detectors"`
	// Backlog is how many bytes before the end a first start reads
	// (-1: the whole file; default 0: from the end).
	Backlog int64 `yaml:"backlog"`
}

// DefaultJournalDetectors is what the journal feeds when the config names
// nothing.
var DefaultJournalDetectors = []string{"sshd"}

// JournalName is the journal source's name.
const JournalName = "journal"

// spec is one source, checked and with its detectors compiled.
type spec struct {
	name    string
	kind    string // "journal" or "file"
	path    string
	backlog int64
	set     *detect.Set
	names   []string
	units   []string
	idents  []string
	command string
}

// Validate checks the section: every detector compiles (a bad pattern is
// an error with its line in parry.yaml), every name a source gives exists,
// and every source has a detector.
func (c *Config) Validate() error {
	_, err := c.plan()
	return err
}

// DetectorSet returns the built-in detectors with the user's own: what
// `parry source test` runs.
func (c Config) DetectorSet() (*detect.Set, error) {
	set, err := detect.Builtin()
	if err != nil {
		return nil, err
	}
	var own []*detect.Detector
	seen := map[string]bool{}
	for _, s := range c.Detectors {
		d, err := detect.Compile(s)
		if err != nil {
			return nil, fmt.Errorf("detectors: %w", err)
		}
		if seen[s.Name] {
			return nil, fmt.Errorf("detectors: %q is defined twice", s.Name)
		}
		seen[s.Name] = true
		own = append(own, d)
	}
	return set.With(own...), nil
}

func pick(all *detect.Set, names []string) (*detect.Set, error) {
	var ds []*detect.Detector
	for _, n := range names {
		d := all.Get(n)
		if d == nil {
			return nil, fmt.Errorf("no detector %q (built in: %v)", n, detectorNames(all))
		}
		if !slices.Contains(ds, d) {
			ds = append(ds, d)
		}
	}
	return detect.NewSet(ds...), nil
}

func detectorNames(s *detect.Set) []string {
	var out []string
	for _, d := range s.Detectors() {
		out = append(out, d.Name())
	}
	return out
}

// plan checks the config and returns the sources to run.
func (c Config) plan() ([]spec, error) {
	all, err := c.DetectorSet()
	if err != nil {
		return nil, err
	}
	var out []spec
	var errs []error
	if c.Journal.Enabled == nil || *c.Journal.Enabled {
		names := c.Journal.Detectors
		if len(names) == 0 {
			names = DefaultJournalDetectors
		}
		set, err := pick(all, names)
		if err != nil {
			errs = append(errs, fmt.Errorf("journal.detectors: %w", err))
		} else {
			units, idents := set.Journal()
			for _, d := range set.Detectors() {
				if s := d.Sources(); len(s.Units) == 0 && len(s.Identifiers) == 0 {
					errs = append(errs, fmt.Errorf("journal.detectors: %q reads no journal unit or identifier", d.Name()))
				}
			}
			for _, u := range units {
				if !logsource.ValidUnit(u) {
					errs = append(errs, fmt.Errorf("journal: unit %q cannot be given to journalctl", u))
				}
			}
			out = append(out, spec{name: JournalName, kind: "journal", set: set, names: detectorNames(set),
				units: units, idents: idents, command: c.Journal.Journalctl})
		}
	}
	seen := map[string]bool{JournalName: true}
	for i, f := range c.Files {
		bad := func(format string, args ...any) {
			errs = append(errs, fmt.Errorf("files[%d]: %s", i, fmt.Sprintf(format, args...)))
		}
		if !filepath.IsAbs(f.Path) {
			bad("path %q must be absolute", f.Path)
			continue
		}
		name := f.Name
		if name == "" {
			name = filepath.Clean(f.Path)
		}
		if !validSourceName(name) {
			bad("name %q: 1..256 printable characters", name)
			continue
		}
		if seen[name] {
			bad("name %q is used twice", name)
			continue
		}
		seen[name] = true
		var set *detect.Set
		if len(f.Detectors) > 0 {
			if set, err = pick(all, f.Detectors); err != nil {
				bad("detectors: %v", err)
				continue
			}
		} else if set = all.ForFile(filepath.Clean(f.Path)); len(set.Detectors()) == 0 {
			bad("no detector reads %s (their files: globs do not match it); name them with detectors:", f.Path)
			continue
		}
		if f.Backlog < -1 {
			bad("backlog %d: -1 (the whole file), 0 (from the end) or a number of bytes", f.Backlog)
			continue
		}
		out = append(out, spec{name: name, kind: "file", path: filepath.Clean(f.Path), backlog: f.Backlog, set: set, names: detectorNames(set)})
	}
	if c.SilentAfter < 0 {
		errs = append(errs, errors.New("silent_after: negative"))
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return out, nil
}

func validSourceName(s string) bool {
	if s == "" || len(s) > 256 {
		return false
	}
	for _, r := range s {
		if r < 0x20 || r == 0x7f {
			return false
		}
	}
	return true
}
