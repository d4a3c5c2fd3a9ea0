package hostcheck

import (
	"cmp"
	"context"
	"slices"
	"time"

	"github.com/parryhq/parry/agent/api"
)

// The check's report types are the protocol's (agent/api), so that the
// CLI reads them without linking the checks.
type (
	// Severity orders findings; the worst one sets the exit code.
	Severity = api.CheckSeverity
	// Finding is one problem, with what to do about it.
	Finding = api.CheckFinding
	// Report is the result of one run.
	Report = api.CheckReport
)

// Severities, weakest first.
const (
	SevInfo     = api.CheckInfo
	SevLow      = api.CheckLow
	SevMedium   = api.CheckMedium
	SevHigh     = api.CheckHigh
	SevCritical = api.CheckCritical
)

// Exit codes of `parry check`, by worst severity.
const (
	ExitClean    = api.CheckExitClean
	ExitLow      = api.CheckExitLow
	ExitMedium   = api.CheckExitMedium
	ExitHigh     = api.CheckExitHigh
	ExitCritical = api.CheckExitCritical
)

var (
	// ParseSeverity reads "info", "low", "medium", "high" or "critical".
	ParseSeverity = api.ParseCheckSeverity
	// ExitCode maps the worst severity of a report to the exit code.
	ExitCode = api.CheckExitCode
)

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
