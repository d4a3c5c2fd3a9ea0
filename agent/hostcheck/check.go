package hostcheck

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"time"
)

// Severity orders findings; the worst one sets the exit code.
type Severity int

// Severities, weakest first.
const (
	SevInfo Severity = iota
	SevLow
	SevMedium
	SevHigh
	SevCritical
)

var sevNames = [...]string{"info", "low", "medium", "high", "critical"}

func (s Severity) String() string {
	if s < 0 || int(s) >= len(sevNames) {
		return fmt.Sprintf("severity(%d)", int(s))
	}
	return sevNames[s]
}

// ParseSeverity reads "info", "low", "medium", "high" or "critical".
func ParseSeverity(s string) (Severity, error) {
	for i, n := range sevNames {
		if n == s {
			return Severity(i), nil
		}
	}
	return 0, fmt.Errorf("unknown severity %q (want info, low, medium, high or critical)", s)
}

// MarshalText writes the name.
func (s Severity) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// UnmarshalText reads the name; empty (a clean report's "worst") is info.
func (s *Severity) UnmarshalText(b []byte) error {
	if len(b) == 0 {
		*s = SevInfo
		return nil
	}
	v, err := ParseSeverity(string(b))
	*s = v
	return err
}

// Exit codes of `parry check`, by worst severity. 1 and 2 keep their usual
// meaning (the check could not run; usage error).
const (
	ExitClean    = 0 // no finding, or info only
	ExitLow      = 3
	ExitMedium   = 4
	ExitHigh     = 5
	ExitCritical = 6
)

// ExitCode maps the worst severity of a report to the exit code.
func ExitCode(worst Severity, any bool) int {
	if !any {
		return ExitClean
	}
	switch worst {
	case SevLow:
		return ExitLow
	case SevMedium:
		return ExitMedium
	case SevHigh:
		return ExitHigh
	case SevCritical:
		return ExitCritical
	}
	return ExitClean
}

// Finding is one problem, with what to do about it.
type Finding struct {
	ID       string   `json:"id"` // stable kind: "key-readable", "ssh-permit-root-login", ...
	Severity Severity `json:"severity"`
	Path     string   `json:"path,omitempty"`
	Message  string   `json:"message"`
	Fix      string   `json:"fix"`
}

// Report is the result of one run.
type Report struct {
	Time     time.Time `json:"time"`
	Findings []Finding `json:"findings"`
	Worst    Severity  `json:"worst"`
	Exit     int       `json:"exit_code"`
}

// MarshalJSON keeps "worst" empty for a clean report.
func (r Report) MarshalJSON() ([]byte, error) {
	type plain Report
	worst := ""
	if len(r.Findings) > 0 {
		worst = r.Worst.String()
	}
	return json.Marshal(struct {
		plain
		Worst string `json:"worst"`
	}{plain(r), worst})
}

// Checker runs the checks. Paths of parry's own files are absolute and not
// under Config.Root; empty ones are skipped, as is the table check when
// TablePresent is nil.
type Checker struct {
	Config       Config
	Now          func() time.Time
	ConfigPath   string // /etc/parry/parry.yaml
	StateDir     string // /var/lib/parry
	SocketPath   string // /run/parry/parry.sock
	Table        string // "inet parry", for messages
	TablePresent func() (bool, error)
}

// Run performs every check and returns the findings, worst first.
func (c *Checker) Run(ctx context.Context) Report {
	cfg := c.Config.WithDefaults()
	now := time.Now
	if c.Now != nil {
		now = c.Now
	}
	r := &run{cfg: cfg, now: now()}
	r.shadow(ctx)
	r.keys(ctx)
	r.envFiles(ctx)
	r.sshd(ctx)
	r.certs(ctx)
	r.self(c)
	slices.SortFunc(r.out, func(a, b Finding) int {
		return cmp.Or(cmp.Compare(b.Severity, a.Severity), cmp.Compare(a.ID, b.ID), cmp.Compare(a.Path, b.Path))
	})
	rep := Report{Time: r.now, Findings: r.out}
	if rep.Findings == nil {
		rep.Findings = []Finding{}
	}
	if len(r.out) > 0 {
		rep.Worst = r.out[0].Severity
	}
	rep.Exit = ExitCode(rep.Worst, len(r.out) > 0)
	return rep
}

// run is the state of one Run.
type run struct {
	cfg  Config
	now  time.Time
	out  []Finding
	seen map[string]bool
}

func (r *run) add(f Finding) {
	key := f.ID + "\x00" + f.Path
	if r.seen == nil {
		r.seen = map[string]bool{}
	}
	if r.seen[key] {
		return
	}
	r.seen[key] = true
	r.out = append(r.out, f)
}
