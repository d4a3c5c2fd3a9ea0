package detect

import (
	"errors"
	"fmt"
	"net/netip"
	"path"
	"path/filepath"
	"regexp"
	"regexp/syntax"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/parryhq/parry/response"
)

// MaxLine is the longest message a detector looks at. Sources cut longer
// lines (and count them); Match refuses a line that is cut or longer.
const MaxLine = 16 << 10

// ErrInvalid is wrapped by every error Compile returns.
var ErrInvalid = errors.New("invalid detector")

// Macros usable in patterns, expanded before compiling. <IP> is the
// address group (the address is then checked with netip.ParseAddr), <PORT>
// the port group.
const (
	macroIP   = `(?P<ip>[0-9A-Fa-f:.]+)`
	macroPort = `(?P<port>[0-9]{1,5})`
)

// Line is one line handed to a detector with what is known of its origin.
// A journal line has Journal set, its Unit and Identifier, and Text is its
// MESSAGE; a line from a file or stdin has Text the whole line.
type Line struct {
	Text       string
	Cut        bool   // the source cut it at MaxLine: never matches
	Journal    bool   // from the journal: Unit and Identifier are checked
	Source     string // name of the source it came from ("journal", "nginx-access")
	Unit       string // _SYSTEMD_UNIT, journal only
	Identifier string // SYSLOG_IDENTIFIER, journal only
	// Root is set when the journal entry's trusted _UID is 0 (journald
	// sets it from the sender's credentials; no other user can forge it).
	// An entry without _SYSTEMD_UNIT is then accepted on its identifier
	// alone (see appliesToJournal).
	Root bool
	Path string    // the file it was read from, file only
	Time time.Time // when it was logged or read; copied into the signal
}

// Outcome is what a detector made of a line.
type Outcome uint8

// The outcomes of Match.
const (
	NotApplicable Outcome = iota // the line is from a source the detector does not read
	Missed                       // read, no pattern matched
	Matched                      // a pattern matched: Result.Signal is set
	Ignored                      // an ignore pattern matched
	Refused                      // a pattern matched but the address is not valid, or the line was cut
)

var outcomeNames = [...]string{"not_applicable", "missed", "matched", "ignored", "refused"}

func (o Outcome) String() string {
	if int(o) < len(outcomeNames) {
		return outcomeNames[o]
	}
	return "outcome(" + strconv.Itoa(int(o)) + ")"
}

// Result is the answer of Match.
type Result struct {
	Outcome  Outcome
	Detector string          // the detector that decided (empty for NotApplicable from a Set)
	Pattern  int             // index of the pattern (Matched, Refused) or ignore pattern (Ignored)
	Signal   response.Signal // Matched only
}

// Detector is a compiled Spec. It is immutable and safe for concurrent use.
type Detector struct {
	name     string
	kind     string
	severity string
	syslog   bool
	sources  Sources
	patterns []pattern
	ignore   []pattern
}

type pattern struct {
	re       *regexp.Regexp
	prefixes []string // every match starts with one of them (none: no check)
	needles  []string // other literals every match contains, longest first
	kind     string
	ip       int // submatch indexes
	user     int
	port     int
	min, max int // shortest and longest input the pattern can match (max -1: unbounded)
}

// Name is the detector's name.
func (d *Detector) Name() string { return d.name }

// Sources returns the sources the detector applies to.
func (d *Detector) Sources() Sources { return d.sources }

// Compile checks a Spec and compiles its patterns. Every error wraps
// ErrInvalid and names the detector, the pattern and its line.
func Compile(s Spec) (*Detector, error) {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("detector %q: %w: %s", s.Name, ErrInvalid, fmt.Sprintf(format, args...))
	}
	if !validName(s.Name) {
		return nil, bad("name must be 1..64 of a-z 0-9 . _ - starting with a letter or digit")
	}
	if s.Kind != "" && !validKind(s.Kind) {
		return nil, bad("kind %q: 1..%d of letters, digits and _ . : -", s.Kind, response.MaxKindLen)
	}
	switch s.Severity {
	case "", "low", "medium", "high", "critical":
	default:
		return nil, bad("severity %q is not one of low, medium, high, critical", s.Severity)
	}
	d := &Detector{name: s.Name, kind: s.Kind, severity: s.Severity, sources: s.Sources}
	switch s.Header {
	case "", "none":
	case "syslog":
		d.syslog = true
	default:
		return nil, bad("header %q is not one of none, syslog", s.Header)
	}
	if err := checkSources(s.Sources); err != nil {
		return nil, bad("%v", err)
	}
	if len(s.Patterns) == 0 {
		return nil, bad("no patterns")
	}
	for i, p := range s.Patterns {
		c, err := compilePattern(p, true)
		if err == nil && p.Kind == "" && s.Kind == "" {
			err = errors.New("no kind (give the detector or the pattern one)")
		}
		if err == nil && p.Kind != "" && !validKind(p.Kind) {
			err = fmt.Errorf("kind %q: 1..%d of letters, digits and _ . : -", p.Kind, response.MaxKindLen)
		}
		if err != nil {
			return nil, bad("pattern %d%s: %v", i+1, atLine(p.Line), err)
		}
		c.kind = orDefault(p.Kind, s.Kind)
		d.patterns = append(d.patterns, c)
	}
	for i, p := range s.Ignore {
		c, err := compilePattern(p, false)
		if err == nil && p.Kind != "" {
			err = errors.New("an ignore pattern has no kind")
		}
		if err != nil {
			return nil, bad("ignore %d%s: %v", i+1, atLine(p.Line), err)
		}
		d.ignore = append(d.ignore, c)
	}
	return d, nil
}

func orDefault(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

func atLine(n int) string {
	if n == 0 {
		return ""
	}
	return fmt.Sprintf(" (line %d)", n)
}

// compilePattern expands the macros, checks the anchors and the groups, and
// compiles ^(?:p)$ so that no alternation can escape the anchors.
func compilePattern(p Pattern, needIP bool) (pattern, error) {
	src := p.Match
	if !strings.HasPrefix(src, "^") || !strings.HasSuffix(src, "$") || strings.HasSuffix(src, `\$`) {
		return pattern{}, fmt.Errorf("%q must be anchored: start with ^ and end with $", src)
	}
	src = strings.ReplaceAll(src, "<IP>", macroIP)
	src = strings.ReplaceAll(src, "<PORT>", macroPort)
	full := "^(?:" + src + ")$"
	re, err := regexp.Compile(full)
	if err != nil {
		return pattern{}, fmt.Errorf("%q: %w", p.Match, err)
	}
	c := pattern{re: re, ip: -1, user: -1, port: -1}
	seen := map[string]bool{}
	for i, n := range re.SubexpNames() {
		if n == "" {
			continue
		}
		if seen[n] {
			return pattern{}, fmt.Errorf("%q: group %q appears twice", p.Match, n)
		}
		seen[n] = true
		switch n {
		case "ip":
			c.ip = i
		case "user":
			c.user = i
		case "port":
			c.port = i
		default:
			return pattern{}, fmt.Errorf("%q: unknown group %q (want ip, user, port)", p.Match, n)
		}
	}
	if needIP && c.ip < 0 {
		return pattern{}, fmt.Errorf("%q has no ip group (use (?P<ip>...) or <IP>)", p.Match)
	}
	tree, err := syntax.Parse(full, syntax.Perl)
	if err != nil { // cannot happen: regexp.Compile parsed it
		return pattern{}, fmt.Errorf("%q: %w", p.Match, err)
	}
	tree = tree.Simplify()
	c.prefixes, c.needles = requiredLiterals(tree)
	c.min, c.max = lengthBounds(tree)
	return c, nil
}

func checkSources(s Sources) error {
	for _, u := range s.Units {
		if !validUnitGlob(u) {
			return fmt.Errorf("unit %q: 1..256 of A-Z a-z 0-9 : _ . @ - \\ and globs * ?", u)
		}
	}
	for _, id := range s.Identifiers {
		if !validIdentifier(id) {
			return fmt.Errorf("identifier %q: 1..64 of A-Z a-z 0-9 _ . @ / -", id)
		}
	}
	for _, f := range s.Files {
		if !filepath.IsAbs(f) {
			return fmt.Errorf("file %q: must be an absolute path", f)
		}
		if _, err := filepath.Match(f, ""); err != nil {
			return fmt.Errorf("file %q: %w", f, err)
		}
	}
	return nil
}

func validName(s string) bool {
	if s == "" || len(s) > 64 || !isAlnum(s[0]) {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

func isAlnum(c byte) bool { return c >= 'a' && c <= 'z' || c >= '0' && c <= '9' }

func validKind(s string) bool {
	if s == "" || len(s) > response.MaxKindLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '.' || c == ':' || c == '-') {
			return false
		}
	}
	return true
}

// validUnitGlob is logsource.ValidUnit's charset plus the globs * and ?.
func validUnitGlob(s string) bool {
	return validChars(s, 256, func(c byte) bool {
		return c == ':' || c == '_' || c == '.' || c == '@' || c == '-' || c == '\\' || c == '*' || c == '?'
	})
}

// validIdentifier reports whether s is a SYSLOG_IDENTIFIER of A-Z a-z 0-9
// _ . @ / - (postfix logs as "postfix/smtpd"), 1..64 long: the charset of
// logsource.ValidIdentifier, so every detector's identifiers can be given
// to journalctl.
func validIdentifier(s string) bool {
	return validChars(s, 64, func(c byte) bool { return c == '_' || c == '.' || c == '@' || c == '/' || c == '-' })
}

func validChars(s string, max int, extra func(byte) bool) bool {
	if s == "" || len(s) > max || s[0] == '-' {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || extra(c)) {
			return false
		}
	}
	return true
}

// AppliesToFile reports whether the detector reads the file at p (one of
// its Files globs matches).
func (d *Detector) AppliesToFile(p string) bool {
	for _, g := range d.sources.Files {
		if ok, _ := filepath.Match(g, p); ok {
			return true
		}
	}
	return false
}

// appliesToJournal checks a journal line's unit and identifier.
//
// journald takes _SYSTEMD_UNIT from the sender's cgroup, which it reads
// from /proc when the message arrives; a short-lived sender (sshd's
// per-connection children, which log one line and exit) is often gone by
// then, and the entry has no unit at all (25 of the 83 sshd entries of the
// recorded test/sshlab journal). Such an entry is accepted on its
// identifier alone when its trusted _UID is 0 (root): a non-root user
// cannot forge _UID, and root can forge anything anyway. An entry with a
// unit must still have one of the detector's units, so a user's
// `logger -t sshd` (session-N.scope, _UID of the user) reaches no detector.
func (d *Detector) appliesToJournal(unit, ident string, root bool) bool {
	if len(d.sources.Units) == 0 && len(d.sources.Identifiers) == 0 {
		return false
	}
	unitless := unit == "" && root && len(d.sources.Identifiers) > 0
	if len(d.sources.Units) > 0 && !unitless && !matchUnit(d.sources.Units, unit) {
		return false
	}
	if len(d.sources.Identifiers) > 0 && !contains(d.sources.Identifiers, ident) {
		return false
	}
	return true
}

func matchUnit(globs []string, unit string) bool {
	for _, g := range globs {
		if g == unit {
			return true
		}
		if strings.ContainsAny(g, "*?") {
			if ok, _ := path.Match(g, unit); ok {
				return true
			}
		}
	}
	return false
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// Match runs the detector over one line. A journal line is first checked against the detector's units and identifiers; a
// file line is not checked against Files (the caller chose the detector for
// the file, see Set.ForFile). With header: syslog, a file line's syslog
// header is split off and its program must be one of the identifiers; a
// line without a header is matched as it is (journalctl -o cat).
func (d *Detector) Match(l Line) Result {
	msg, ok := d.message(l)
	if !ok {
		return Result{Outcome: NotApplicable, Detector: d.name}
	}
	if l.Cut || len(l.Text) > MaxLine {
		return Result{Outcome: Refused, Detector: d.name, Pattern: -1}
	}
	for i := range d.patterns {
		p := &d.patterns[i]
		loc := p.find(msg)
		if loc == nil {
			continue
		}
		if j := d.ignored(msg); j >= 0 {
			return Result{Outcome: Ignored, Detector: d.name, Pattern: j}
		}
		sig, ok := d.signal(p, msg, loc, l)
		if !ok {
			return Result{Outcome: Refused, Detector: d.name, Pattern: i}
		}
		return Result{Outcome: Matched, Detector: d.name, Pattern: i, Signal: sig}
	}
	if j := d.ignored(msg); j >= 0 {
		return Result{Outcome: Ignored, Detector: d.name, Pattern: j}
	}
	return Result{Outcome: Missed, Detector: d.name}
}

// message returns the text the patterns see, or false when the line is
// from a source the detector does not read.
func (d *Detector) message(l Line) (string, bool) {
	if l.Journal {
		return l.Text, d.appliesToJournal(l.Unit, l.Identifier, l.Root)
	}
	if d.syslog {
		if prog, m, ok := splitSyslog(l.Text); ok {
			if len(d.sources.Identifiers) > 0 && !contains(d.sources.Identifiers, prog) {
				return "", false
			}
			return m, true
		}
	}
	return l.Text, true
}

func (d *Detector) ignored(msg string) int {
	for j := range d.ignore {
		if d.ignore[j].matches(msg) {
			return j
		}
	}
	return -1
}

// precheck is the cheap test run before the regexp: the length bounds and
// the literals every match must contain.
func (p *pattern) precheck(s string) bool {
	if len(s) < p.min || p.max >= 0 && len(s) > p.max {
		return false
	}
	if len(p.prefixes) > 0 && !hasAnyPrefix(s, p.prefixes) {
		return false
	}
	for _, n := range p.needles {
		if !strings.Contains(s, n) {
			return false
		}
	}
	return true
}

func hasAnyPrefix(s string, prefixes []string) bool {
	for _, p := range prefixes {
		if strings.HasPrefix(s, p) {
			return true
		}
	}
	return false
}

func (p *pattern) matches(s string) bool { return p.precheck(s) && p.re.MatchString(s) }

func (p *pattern) find(s string) []int {
	if !p.precheck(s) {
		return nil
	}
	return p.re.FindStringSubmatchIndex(s)
}

// signal builds the signal of a match. The address must parse; an
// IPv4-mapped IPv6 address is unmapped.
func (d *Detector) signal(p *pattern, msg string, loc []int, l Line) (response.Signal, bool) {
	a, b := loc[2*p.ip], loc[2*p.ip+1]
	if a < 0 {
		return response.Signal{}, false
	}
	ip, err := netip.ParseAddr(msg[a:b])
	if err != nil || ip.Zone() != "" {
		return response.Signal{}, false
	}
	sig := response.Signal{
		Kind:     p.kind,
		IP:       ip.Unmap(),
		Source:   d.name,
		Severity: d.severity,
		Detail:   bounded(msg, 1024),
		Time:     l.Time,
		Attrs:    map[string]string{"detector": d.name},
	}
	if p.user >= 0 && loc[2*p.user] >= 0 {
		sig.User = bounded(msg[loc[2*p.user]:loc[2*p.user+1]], response.MaxFieldLen)
	}
	if p.port >= 0 && loc[2*p.port] >= 0 {
		sig.Attrs["port"] = msg[loc[2*p.port]:loc[2*p.port+1]]
	}
	for _, kv := range [...][2]string{{"source", l.Source}, {"unit", l.Unit}, {"identifier", l.Identifier}, {"path", l.Path}} {
		if kv[1] != "" {
			sig.Attrs[kv[0]] = bounded(kv[1], response.MaxAttrValue)
		}
	}
	return sig, true
}

// bounded returns s as valid UTF-8 of at most n bytes, cut at a rune
// boundary.
func bounded(s string, n int) string {
	if !utf8.ValidString(s) {
		s = strings.ToValidUTF8(s, "\uFFFD")
	}
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}
