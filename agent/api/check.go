package api

import (
	"encoding/json"
	"fmt"
	"time"
)

// The answer to op check (agent/hostcheck's Report, Finding and Severity).

// CheckSeverity orders findings; the worst one sets the exit code.
type CheckSeverity int

// Severities, weakest first.
const (
	CheckInfo CheckSeverity = iota
	CheckLow
	CheckMedium
	CheckHigh
	CheckCritical
)

var checkSevNames = [...]string{"info", "low", "medium", "high", "critical"}

func (s CheckSeverity) String() string {
	if s < 0 || int(s) >= len(checkSevNames) {
		return fmt.Sprintf("severity(%d)", int(s))
	}
	return checkSevNames[s]
}

// ParseCheckSeverity reads "info", "low", "medium", "high" or "critical".
func ParseCheckSeverity(s string) (CheckSeverity, error) {
	for i, n := range checkSevNames {
		if n == s {
			return CheckSeverity(i), nil
		}
	}
	return 0, fmt.Errorf("unknown severity %q (want info, low, medium, high or critical)", s)
}

// MarshalText writes the name.
func (s CheckSeverity) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// UnmarshalText reads the name; empty (a clean report's "worst") is info.
func (s *CheckSeverity) UnmarshalText(b []byte) error {
	if len(b) == 0 {
		*s = CheckInfo
		return nil
	}
	v, err := ParseCheckSeverity(string(b))
	*s = v
	return err
}

// Exit codes of `parry check`, by worst severity. 1 and 2 keep their usual
// meaning (the check could not run; usage error).
const (
	CheckExitClean    = 0 // no finding, or info only
	CheckExitLow      = 3
	CheckExitMedium   = 4
	CheckExitHigh     = 5
	CheckExitCritical = 6
)

// CheckExitCode maps the worst severity of a report to the exit code.
func CheckExitCode(worst CheckSeverity, any bool) int {
	if !any {
		return CheckExitClean
	}
	switch worst {
	case CheckLow:
		return CheckExitLow
	case CheckMedium:
		return CheckExitMedium
	case CheckHigh:
		return CheckExitHigh
	case CheckCritical:
		return CheckExitCritical
	}
	return CheckExitClean
}

// CheckFinding is one problem, with what to do about it.
type CheckFinding struct {
	ID       string        `json:"id"` // stable kind: "key-readable", "ssh-permit-root-login", ...
	Severity CheckSeverity `json:"severity"`
	Path     string        `json:"path,omitempty"`
	Message  string        `json:"message"`
	Fix      string        `json:"fix"`
}

// CheckReport is the result of one run.
type CheckReport struct {
	Time     time.Time      `json:"time"`
	Findings []CheckFinding `json:"findings"`
	Worst    CheckSeverity  `json:"worst"`
	Exit     int            `json:"exit_code"`
}

// MarshalJSON keeps "worst" empty for a clean report.
func (r CheckReport) MarshalJSON() ([]byte, error) {
	type plain CheckReport
	worst := ""
	if len(r.Findings) > 0 {
		worst = r.Worst.String()
	}
	return json.Marshal(struct {
		plain
		Worst string `json:"worst"`
	}{plain(r), worst})
}
