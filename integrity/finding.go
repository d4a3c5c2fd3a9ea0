package integrity

import (
	"fmt"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/parryhq/parry/response"
)

// SignalKind is the response.Signal kind of every finding.
const SignalKind = "integrity_violation"

// Finding kinds.
const (
	KindAdded      = "added"          // in the selection now, not in the baseline
	KindRemoved    = "removed"        // in the baseline, gone now
	KindChanged    = "changed"        // attributes differ from the baseline
	KindPackage    = "package_update" // changed, and the content matches dpkg's md5sums
	KindRestored   = "restored"       // back to its baseline state after a reported change
	KindPermission = "permission"     // violates a permission rule
	KindUnreadable = "unreadable"     // could not be read completely
	KindNotHashed  = "not_hashed"     // larger than max_hash_size: recorded by metadata only
	KindBurst      = "burst"          // many files created in one directory: their findings aggregated
	KindOverflow   = "overflow"       // events were lost; a rescan follows
	KindWatchLimit = "watch_limit"    // no inotify watch could be added; a rescan follows
)

// Severities, as response.Signal uses them.
const (
	SevLow      = "low"
	SevMedium   = "medium"
	SevHigh     = "high"
	SevCritical = "critical"
)

// Change is one attribute that differs: Old → New.
type Change struct {
	Attr string `json:"attr"`
	Old  string `json:"old"`
	New  string `json:"new"`
}

// Finding is one thing the integrity watcher or a check noticed.
type Finding struct {
	Time        time.Time `json:"time"`
	Kind        string    `json:"kind"`
	Severity    string    `json:"severity"`
	Path        string    `json:"path"`
	Changes     []Change  `json:"changes,omitempty"`
	Rule        string    `json:"rule,omitempty"`        // permission: the rule's path glob
	Package     string    `json:"package,omitempty"`     // package_update: the dpkg package
	Remediation string    `json:"remediation,omitempty"` // what was put back, if anything
	Count       int       `json:"count,omitempty"`       // burst: files aggregated into this finding in its interval
	Detail      string    `json:"detail"`
	// Diff is the unified diff (hunks, no header) from the accepted content
	// to the current one, for files integrity.diff selects; DiffOmitted
	// counts the lines left off (bounds: MaxDiffLines in status,
	// ReportDiffLines in what is reported at once). ContentNote says why a
	// selected file's content change has no diff (secret, binary, too
	// large, no copy kept).
	Diff        []string `json:"diff,omitempty"`
	DiffOmitted int      `json:"diff_omitted,omitempty"`
	ContentNote string   `json:"content_note,omitempty"`
	// Actor is the process behind the change (integrity.attribution), nil
	// when unknown.
	Actor *Actor `json:"actor,omitempty"`
}

// Signal turns f into the signal the response policy receives. Text is
// made valid UTF-8 (paths are bytes) and cut to the signal's limits.
func (f Finding) Signal() response.Signal {
	attrs := map[string]string{"finding": f.Kind}
	for k, v := range map[string]string{"rule": f.Rule, "package": f.Package, "remediation": f.Remediation,
		"diff": diffText(f, response.MaxAttrValue), "content": f.ContentNote, "actor": actorText(f.Actor)} {
		if v != "" {
			attrs[k] = clip(v, response.MaxAttrValue)
		}
	}
	return response.Signal{
		Kind: SignalKind, Source: "integrity", Severity: f.Severity,
		Path: clip(f.Path, response.MaxTextLen), Detail: clip(f.Detail, response.MaxTextLen), Time: f.Time, Attrs: attrs,
	}
}

// ActorText is the actor in one line, "" when unknown (for evidence and
// reports).
func (f Finding) ActorText() string { return actorText(f.Actor) }

// ContentText is what changed in the content, for evidence and reports:
// the diff as text cut to ReportDiffBytes, or the content note.
func (f Finding) ContentText() string {
	if len(f.Diff) == 0 {
		return f.ContentNote
	}
	return diffText(f, ReportDiffBytes)
}

func actorText(a *Actor) string {
	if a == nil {
		return ""
	}
	return a.String()
}

// clip makes s valid UTF-8 of at most n bytes.
func clip(s string, n int) string {
	s = strings.ToValidUTF8(s, "\uFFFD")
	if len(s) <= n {
		return s
	}
	s = s[:n-len("…")]
	for !utf8.ValidString(s) {
		s = s[:len(s)-1]
	}
	return s + "…"
}

// String is the one-line human form used in logs and the CLI.
func (f Finding) String() string {
	return fmt.Sprintf("%s %s %s: %s", f.Severity, f.Kind, f.Path, f.Detail)
}

func modeStr(m uint32) string { return fmt.Sprintf("%04o", m) }

func tsStr(ns int64) string { return time.Unix(0, ns).UTC().Format(time.RFC3339Nano) }

// Diff lists the attributes that differ between old and new. For
// directories, size, link count, mtime and ctime are not compared: they
// change whenever an entry is added or removed, which is reported for the
// entry itself.
func Diff(old, new *Entry) []Change {
	var cs []Change
	add := func(attr, o, n string) { cs = append(cs, Change{Attr: attr, Old: o, New: n}) }
	if old.Type != new.Type {
		add("type", old.Type.String(), new.Type.String())
	}
	if old.Mode != new.Mode {
		add("mode", modeStr(old.Mode), modeStr(new.Mode))
	}
	if old.UID != new.UID {
		add("uid", strconv.FormatUint(uint64(old.UID), 10), strconv.FormatUint(uint64(new.UID), 10))
	}
	if old.GID != new.GID {
		add("gid", strconv.FormatUint(uint64(old.GID), 10), strconv.FormatUint(uint64(new.GID), 10))
	}
	if old.Hash != new.Hash {
		add("hash", old.HashHex(), new.HashHex())
	}
	if old.Target != new.Target {
		add("target", old.Target, new.Target)
	}
	if old.Xattrs != new.Xattrs {
		add("xattrs", old.Xattrs, new.Xattrs)
	}
	if old.Flags != new.Flags {
		add("flags", FlagsString(old.Flags), FlagsString(new.Flags))
	}
	if old.Inode != new.Inode {
		add("inode", strconv.FormatUint(old.Inode, 10), strconv.FormatUint(new.Inode, 10))
	}
	if old.Type == TypeDir && new.Type == TypeDir {
		return cs
	}
	if old.Size != new.Size {
		add("size", strconv.FormatInt(old.Size, 10), strconv.FormatInt(new.Size, 10))
	}
	if old.Nlink != new.Nlink {
		add("nlink", strconv.FormatUint(old.Nlink, 10), strconv.FormatUint(new.Nlink, 10))
	}
	if old.Mtime != new.Mtime {
		add("mtime", tsStr(old.Mtime), tsStr(new.Mtime))
	}
	if old.Ctime != new.Ctime {
		add("ctime", tsStr(old.Ctime), tsStr(new.Ctime))
	}
	return cs
}

// metaOnly lists attributes whose change alone is medium severity.
var metaOnly = map[string]bool{"size": true, "nlink": true, "mtime": true, "ctime": true, "inode": true}

// contentish lists the attributes a package update may change.
var contentish = map[string]bool{"hash": true, "size": true, "nlink": true, "mtime": true, "ctime": true, "inode": true}

const privBits = 0o6000 // setuid | setgid

// classify builds the finding for a change from base to cur at path (nil
// when they are equal). Gaining setuid/setgid is critical.
func classify(path string, base, cur *Entry, now time.Time) *Finding {
	if *base == *cur || (!base.Exists() && !cur.Exists()) {
		return nil // the common case: nothing allocated
	}
	f := &Finding{Time: now, Path: path}
	switch {
	case !base.Exists():
		f.Kind, f.Severity = KindAdded, SevMedium
		f.Detail = fmt.Sprintf("new %s, mode %s, uid %d, gid %d, size %d", cur.Type, modeStr(cur.Mode), cur.UID, cur.GID, cur.Size)
		if h := cur.HashHex(); h != "" {
			f.Detail += ", hash " + h
		}
	case !cur.Exists():
		f.Kind, f.Severity = KindRemoved, SevHigh
		f.Detail = fmt.Sprintf("%s removed", base.Type)
	default:
		f.Changes = Diff(base, cur)
		if len(f.Changes) == 0 {
			return nil
		}
		f.Kind, f.Severity = KindChanged, SevMedium
		parts := make([]string, len(f.Changes))
		for i, c := range f.Changes {
			if !metaOnly[c.Attr] {
				f.Severity = SevHigh
			}
			parts[i] = fmt.Sprintf("%s %s → %s", c.Attr, short(c.Old), short(c.New))
			if c.Attr == "flags" { // say it in words: attackers clear +i to edit, set it to persist
				parts[i] = flagsDetail(base.Flags, cur.Flags)
			}
		}
		f.Detail = strings.Join(parts, "; ")
	}
	if cur.Exists() && cur.Mode&privBits&^base.Mode != 0 {
		f.Severity = SevCritical
		f.Detail += fmt.Sprintf(" (gained %s)", privName(cur.Mode&privBits&^base.Mode))
	}
	if cur.Err != "" && cur.Err != base.Err {
		f.Detail += "; incomplete: " + cur.Err
	}
	return f
}

func privName(bits uint32) string {
	var n []string
	if bits&0o4000 != 0 {
		n = append(n, "setuid")
	}
	if bits&0o2000 != 0 {
		n = append(n, "setgid")
	}
	return strings.Join(n, "+")
}

func short(s string) string {
	if s == "" {
		return `""`
	}
	if len(s) > 80 {
		return s[:16] + "…"
	}
	return s
}
