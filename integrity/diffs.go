package integrity

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"
)

// Bounds of the diff a finding carries.
const (
	// MaxDiffLines is the most diff lines a finding keeps (integrity
	// status); the rest are counted in DiffOmitted.
	MaxDiffLines = 2000
	// MaxDiffBytes bounds the diff text one finding keeps.
	MaxDiffBytes = 64 << 10
	// MaxOpenDiffBytes bounds the diff text of all open findings: past it,
	// a finding keeps only what a report carries (so the bound is this
	// plus ReportDiffBytes per open finding).
	MaxOpenDiffBytes = 8 << 20
	// ReportDiffLines and ReportDiffBytes bound the diff in what is
	// reported as it happens (audit line, journal, signal, notifications).
	ReportDiffLines = 20
	ReportDiffBytes = 1000
)

// Content notes: why a finding about a selected file shows no diff.
const (
	NoteSecret = "content changed (secret: not shown)"
	NoteBinary = "binary content changed"
)

// DefaultDiff is the selection whose content is kept and diffed: who may
// log in and how (sshd, sudo, PAM, accounts), what runs by itself
// (cron, systemd units, ld.so.preload, shell start-up files, root's
// authorized_keys) and where names resolve (hosts, resolv.conf,
// nsswitch.conf). All small text files an attacker edits to get in or to
// stay.
func DefaultDiff() []string {
	return []string{
		"/etc/ssh/sshd_config", "/etc/ssh/sshd_config.d/*", "/etc/ssh/ssh_config", "/etc/ssh/ssh_config.d/*",
		"/etc/sudoers", "/etc/sudoers.d/*", "/etc/pam.d/*", "/etc/security/*.conf",
		"/etc/passwd", "/etc/group", "/etc/login.defs",
		"/etc/crontab", "/etc/cron*/**", "/etc/systemd/system/**", "/etc/ld.so.preload", "/etc/rc.local",
		"/etc/profile", "/etc/profile.d/*", "/etc/bash.bashrc", "/etc/environment",
		"/root/.ssh/authorized_keys",
		"/etc/hosts", "/etc/resolv.conf", "/etc/nsswitch.conf",
	}
}

// differ keeps the accepted content of the files integrity.diff selects
// and explains their content changes with a diff. The Monitor's lock
// guards it.
type differ struct {
	globs   []glob
	fixed   []string // the literal leading directories of each glob: a cheap first test
	secrets *secrets
	store   *copyStore
	hashOf  func([]byte) [32]byte
}

func newDiffer(cfg Config, stateDir string, hashOf func([]byte) [32]byte) *differ {
	d := &differ{secrets: newSecrets(cfg.Rules), store: newCopyStore(stateDir, hashOf), hashOf: hashOf}
	for _, g := range cfg.Diff {
		d.globs = append(d.globs, compileGlob(g))
		d.fixed = append(d.fixed, literalDir(g))
	}
	d.store.keep = d.selected
	return d
}

// selected reports whether path's content may be kept: integrity.diff
// selects it and it is not a secret.
func (d *differ) selected(path string) bool {
	return len(d.globs) > 0 && d.wanted(path) && !d.secrets.secret(path)
}

func (d *differ) wanted(path string) bool {
	var segs []string // split once, for the globs whose literal part fits
	for i, g := range d.globs {
		if !strings.HasPrefix(path, d.fixed[i]) {
			continue
		}
		if g.segs == nil {
			if g.match(path) {
				return true
			}
			continue
		}
		if segs == nil {
			segs = strings.Split(strings.TrimPrefix(path, "/"), "/")
		}
		if matchSegs(g.segs, segs) {
			return true
		}
	}
	return false
}

// literalDir is the leading directories of glob g without pattern
// characters, with a trailing "/": every path g matches starts with it.
// ("/etc/ssh/sshd_config.d/*" → "/etc/ssh/sshd_config.d/", "/etc/cron*/**"
// → "/etc/").
func literalDir(g string) string {
	end := strings.IndexAny(g, "*?[\\")
	if end < 0 {
		end = len(g)
	}
	return g[:strings.LastIndexByte(g[:end], '/')+1]
}

// take keeps a copy of every selected regular file among ents (the new
// baseline state of the paths under, when under is not nil), and drops
// the copies of the paths under it that are no longer selected or whose
// state changed. It returns how many files could not be kept (they get
// no diff).
func (d *differ) take(ents map[string]Entry, under func(string) bool, now time.Time) int {
	failed := 0
	for p, e := range ents {
		if e.Type != TypeFile || e.HashHex() == "" || (under != nil && !under(p)) || !d.selected(p) {
			continue
		}
		data, err := readCopy(p, e.Hash, d.hashOf)
		if err == nil {
			err = d.store.put(p, e.Hash, data, now)
		}
		if err != nil {
			failed++
		}
	}
	d.store.keepOnly(func(p string, hash [32]byte) bool {
		if under != nil && !under(p) {
			return true
		}
		e, ok := ents[p]
		return ok && e.Type == TypeFile && e.Hash == hash && d.selected(p)
	})
	return failed
}

// explain adds to f (a finding about path, from base to cur) what changed
// in its content, when integrity.diff selects path: a unified diff, or a
// note saying why there is none. Secret files never have their content
// read here.
func (d *differ) explain(f *Finding, base, cur *Entry) {
	switch f.Kind {
	case KindChanged, KindPackage, KindAdded, KindRemoved:
	default:
		return
	}
	if len(d.globs) == 0 || !d.wanted(f.Path) {
		return
	}
	oldFile, newFile := base.Type == TypeFile, cur.Type == TypeFile
	switch {
	case oldFile && newFile:
		if base.Hash == cur.Hash {
			return // metadata only
		}
	case f.Kind == KindAdded && newFile, f.Kind == KindRemoved && oldFile:
	default:
		return
	}
	if d.secrets.secret(f.Path) {
		f.ContentNote = NoteSecret
		return
	}
	var old, cur2 []byte
	var err error
	if oldFile {
		if old, err = d.store.get(f.Path, base.Hash); err != nil {
			f.ContentNote = "content changed; no diff: " + err.Error()
			return
		}
	}
	if newFile {
		if cur2, err = readCopy(f.Path, cur.Hash, d.hashOf); err != nil {
			f.ContentNote = "content changed; no diff: current content " + err.Error()
			return
		}
	}
	if isBinary(old) || isBinary(cur2) {
		f.ContentNote = NoteBinary
		return
	}
	lines, err := unifiedDiff(string(old), string(cur2))
	var big errDiffTooLarge
	switch {
	case errors.As(err, &big):
		f.ContentNote = big.Error()
		return
	case err != nil:
		f.ContentNote = "content changed; no diff: " + err.Error()
		return
	case len(lines) == 0:
		f.ContentNote = "content changed only in the final newline"
		return
	}
	n, size := 0, 0
	for n < len(lines) && n < MaxDiffLines && size+len(lines[n])+1 <= MaxDiffBytes {
		size += len(lines[n]) + 1
		n++
	}
	f.DiffOmitted = len(lines) - n
	f.Diff = lines[:n:n]
}

// isBinary: a NUL byte, or not UTF-8.
func isBinary(b []byte) bool {
	return bytes.IndexByte(b, 0) >= 0 || !utf8.Valid(b)
}

func diffSize(fs []Finding) int {
	n := 0
	for _, f := range fs {
		for _, l := range f.Diff {
			n += len(l) + 1
		}
	}
	return n
}

// cutDiff returns f with its diff cut to what a report carries.
func cutDiff(f Finding) Finding {
	if len(f.Diff) == 0 {
		return f
	}
	n, size := 0, 0
	for n < len(f.Diff) && n < ReportDiffLines && size+len(f.Diff[n])+1 <= ReportDiffBytes {
		size += len(f.Diff[n]) + 1
		n++
	}
	if n < len(f.Diff) {
		f.DiffOmitted += len(f.Diff) - n
		f.Diff = f.Diff[:n:n]
	}
	return f
}

// diffText is f's diff as one text for a signal attribute, at most n bytes.
func diffText(f Finding, n int) string {
	if len(f.Diff) == 0 {
		return ""
	}
	s := strings.Join(f.Diff, "\n")
	if f.DiffOmitted > 0 {
		s += fmt.Sprintf("\n… %d more lines", f.DiffOmitted)
	}
	return clip(s, n)
}

// hashOf hashes data with the scanner's algorithm.
func (s *Scanner) hashOf(data []byte) [32]byte {
	h := s.newHash()
	h.Write(data)
	var sum [32]byte
	h.Sum(sum[:0])
	return sum
}
