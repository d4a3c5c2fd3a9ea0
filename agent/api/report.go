package api

import "time"

// The answer to op report: the incident report agent/report builds from
// the audit log, which the CLI renders (agent/cli/reportfmt).

// Report is the summary of one window of the audit log.
type Report struct {
	Host      string           `json:"host,omitempty"`
	From      time.Time        `json:"from"`
	To        time.Time        `json:"to"`
	Chain     AuditChain       `json:"chain"`
	Totals    ReportTotals     `json:"totals"`
	Blocks    []ReportAction   `json:"blocks"`
	Unblocks  []ReportAction   `json:"unblocks"`
	Refused   []ReportAction   `json:"refused"`
	Lockdowns []ReportAction   `json:"lockdowns"`
	ByKind    []ReportCount    `json:"signals_by_kind"`
	BySender  []ReportCount    `json:"signals_by_sender"`
	Sources   []ReportSource   `json:"top_sources"`
	Findings  []ReportFinding  `json:"findings"`
	Evidence  []ReportEvidence `json:"evidence"`
	Malformed int              `json:"malformed_lines,omitempty"`

	// Added for the HTML report's charts; absent from older daemons.
	Series     *ReportSeries `json:"series,omitempty"`              // counts over the window, in equal steps
	ByRule     []ReportCount `json:"blocks_by_rule,omitempty"`      // block decisions by source/rule ("policy/auth-bruteforce", "cli")
	ByDetector []ReportCount `json:"signals_by_detector,omitempty"` // signals by the detector, else the reporting program
	ByCountry  []ReportCount `json:"sources_by_country,omitempty"`  // signals by the country a source sent (absent: none known)
	ByASN      []ReportCount `json:"sources_by_asn,omitempty"`      // signals by the AS number a source sent (absent: none known)
}

// ReportSeries is what happened in each step of the window: element i of
// each slice counts [Start+i*Step, Start+(i+1)*Step).
type ReportSeries struct {
	Start    time.Time `json:"start"`
	Step     int64     `json:"step_seconds"`
	Blocks   []int     `json:"blocks"`   // block decisions
	Signals  []int     `json:"signals"`  //
	Refused  []int     `json:"refused"`  // decisions or requests refused
	Findings []int     `json:"findings"` // integrity findings
}

// ReportTotals are the counts in the window (rows above are capped, these are not).
type ReportTotals struct {
	Blocks      int `json:"blocks"`       // block decisions
	Targets     int `json:"targets"`      // addresses and CIDRs in them
	Unblocks    int `json:"unblocks"`     //
	Expired     int `json:"expired"`      // blocks the kernel expired
	Refused     int `json:"refused"`      // decisions or requests refused
	Lockdowns   int `json:"lockdowns"`    //
	Releases    int `json:"releases"`     //
	Signals     int `json:"signals"`      //
	Findings    int `json:"findings"`     // integrity findings
	Evidence    int `json:"evidence"`     // snapshots captured
	DryRuns     int `json:"dry_runs"`     // decisions recorded but not enforced
	Reconciles  int `json:"reconciles"`   // table re-asserted
	TableHealed int `json:"table_healed"` // reconciles that found the table missing
}

// ReportAction is one block, unblock, refusal, lockdown or release.
type ReportAction struct {
	Time    time.Time `json:"time"`
	Action  string    `json:"action"`
	ID      string    `json:"id,omitempty"`
	Targets []string  `json:"targets,omitempty"`
	Until   string    `json:"until,omitempty"`
	Reason  string    `json:"reason,omitempty"`
	Source  string    `json:"source,omitempty"`
	Rule    string    `json:"rule,omitempty"`
	Sender  string    `json:"sender,omitempty"`
	Isolate bool      `json:"isolate,omitempty"`
	Error   string    `json:"error,omitempty"`
	DryRun  bool      `json:"dry_run,omitempty"`
	Conns   int       `json:"connections,omitempty"` // connections the target had at block time
}

// ReportCount is a key and how often it occurred.
type ReportCount struct {
	Key string `json:"key"`
	N   int    `json:"n"`
}

// ReportSource is a remote address and what it caused.
type ReportSource struct {
	Addr    string `json:"addr"`
	Signals int    `json:"signals"`
	Blocks  int    `json:"blocks"`
	Country string `json:"country,omitempty"` // as the signal said (ISO 3166 code), when one did
	ASN     string `json:"asn,omitempty"`     // as the signal said, when one did
}

// ReportFinding is one integrity finding.
type ReportFinding struct {
	Time     time.Time `json:"time"`
	Path     string    `json:"path"`
	Severity string    `json:"severity,omitempty"`
	Detail   string    `json:"detail,omitempty"`
	Actor    string    `json:"actor,omitempty"` // who changed it, one line (integrity.attribution)
	Diff     string    `json:"diff,omitempty"`  // what changed, the diff cut to 1,000 bytes, or why there is none
}

// ReportEvidence is one evidence snapshot.
type ReportEvidence struct {
	Time    time.Time `json:"time"`
	ID      string    `json:"id"`
	SHA256  string    `json:"sha256"`
	Reason  string    `json:"reason,omitempty"`
	Trigger string    `json:"trigger,omitempty"`
}

// AuditChain is the audit chain verification result, as the agent reports it.
type AuditChain struct {
	Checked  bool   `json:"checked"`             // false: verification was not run
	OK       bool   `json:"ok"`                  //
	Lines    int    `json:"lines"`               // lines verified
	FirstBad int    `json:"first_bad,omitempty"` // 1-based line of the first break
	Reason   string `json:"reason,omitempty"`    //
}
