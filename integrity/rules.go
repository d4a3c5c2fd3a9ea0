package integrity

import (
	"errors"
	"fmt"
	"os/user"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

var denyBits = map[string]uint32{
	"world_readable": 0o004,
	"world_writable": 0o002,
	"group_writable": 0o020,
	"setuid":         0o4000,
	"setgid":         0o2000,
}

// Rules checks permission rules and puts modes and owners back.
type Rules struct {
	rules []compiledRule
}

type compiledRule struct {
	Rule
	glob    glob
	modeMax uint32 // valid when hasMax
	hasMax  bool
	deny    uint32
	uid     int64 // -1: unchecked
	gid     int64
}

// NewRules compiles rules, resolving owner and group names on this host.
func NewRules(rules []Rule) (*Rules, error) {
	rs := &Rules{}
	for i, r := range rules {
		if err := r.validate(); err != nil {
			return nil, fmt.Errorf("integrity.rules[%d]: %w", i, err)
		}
		c := compiledRule{Rule: r, glob: compileGlob(r.Path), uid: -1, gid: -1}
		if r.Severity == "" {
			c.Severity = SevHigh
		}
		if r.ModeMax != "" {
			c.modeMax, _ = parseMode(r.ModeMax)
			c.hasMax = true
		}
		for _, d := range r.Deny {
			c.deny |= denyBits[d]
		}
		var err error
		if r.Owner != "" {
			if c.uid, err = lookupID(r.Owner, user.Lookup, func(u *user.User) string { return u.Uid }); err != nil {
				return nil, fmt.Errorf("integrity.rules[%d] owner: %w", i, err)
			}
		}
		if r.Group != "" {
			if c.gid, err = lookupID(r.Group, user.LookupGroup, func(g *user.Group) string { return g.Gid }); err != nil {
				return nil, fmt.Errorf("integrity.rules[%d] group: %w", i, err)
			}
		}
		rs.rules = append(rs.rules, c)
	}
	return rs, nil
}

func lookupID[T any](name string, lookup func(string) (T, error), id func(T) string) (int64, error) {
	if n, err := strconv.ParseUint(name, 10, 32); err == nil {
		return int64(n), nil
	}
	v, err := lookup(name)
	if err != nil {
		return 0, fmt.Errorf("%q: %w", name, err)
	}
	n, err := strconv.ParseUint(id(v), 10, 32)
	if err != nil {
		return 0, fmt.Errorf("%q: bad id: %w", name, err)
	}
	return int64(n), nil
}

// violation is what one rule found wrong with an entry, and the mode and
// owner that would satisfy it.
type violation struct {
	rule     *compiledRule
	problems []string
	mode     uint32
	uid, gid int64
}

func (r *compiledRule) check(e *Entry) *violation {
	if e.Type != TypeFile && e.Type != TypeDir {
		return nil // modes of symlinks mean nothing; devices are out of scope
	}
	v := &violation{rule: r, mode: e.Mode, uid: -1, gid: -1}
	if r.hasMax && e.Mode&^r.modeMax != 0 {
		v.problems = append(v.problems, fmt.Sprintf("mode %s exceeds %s", modeStr(e.Mode), modeStr(r.modeMax)))
		v.mode &= r.modeMax
	}
	if bad := e.Mode & r.deny; bad != 0 {
		for _, name := range r.Deny {
			if e.Mode&denyBits[name] != 0 {
				v.problems = append(v.problems, name)
			}
		}
		v.mode &^= r.deny
	}
	if r.uid >= 0 && int64(e.UID) != r.uid {
		v.problems = append(v.problems, fmt.Sprintf("owner %d, want %s", e.UID, r.Owner))
		v.uid = r.uid
	}
	if r.gid >= 0 && int64(e.GID) != r.gid {
		v.problems = append(v.problems, fmt.Sprintf("group %d, want %s", e.GID, r.Group))
		v.gid = r.gid
	}
	if len(v.problems) == 0 {
		return nil
	}
	return v
}

// Check returns a permission finding for each rule path violates,
// remediating first where the rule says so. The returned entry is the state
// after any remediation.
func (rs *Rules) Check(path string, e Entry, now time.Time) ([]Finding, Entry) {
	if rs == nil || !e.Exists() {
		return nil, e
	}
	var out []Finding
	for i := range rs.rules {
		r := &rs.rules[i]
		if !r.glob.match(path) {
			continue
		}
		v := r.check(&e)
		if v == nil {
			continue
		}
		f := Finding{Time: now, Kind: KindPermission, Severity: r.Severity, Path: path, Rule: r.Path,
			Detail: strings.Join(v.problems, "; ")}
		if r.Remediate {
			after, what, err := remediate(path, &e, v)
			switch {
			case errors.Is(err, errHardLinked):
				f.Remediation = "refused: " + err.Error()
			case err != nil:
				f.Remediation = "failed: " + err.Error()
			default:
				f.Remediation = what
				e = after
			}
		}
		out = append(out, f)
	}
	return out, e
}

var (
	errReplaced   = errors.New("file was replaced meanwhile; not touched")
	errHardLinked = errors.New("not touched: a mode or owner change applies to every link, and another may be a file outside the watched tree (a link to /etc/shadow)")
)

// remediate applies v's mode and owner to path through a descriptor opened
// without following symlinks, after checking it is still the inode e.
func remediate(path string, e *Entry, v *violation) (Entry, string, error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC|unix.O_NOCTTY, 0)
	if err != nil {
		return *e, "", fmt.Errorf("open: %w", err)
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return *e, "", fmt.Errorf("fstat: %w", err)
	}
	if st.Ino != e.Inode {
		return *e, "", errReplaced
	}
	// Directories cannot be hard-linked (their count is that of their
	// subdirectories); a regular file with more than one name may be
	// somebody else's file seen through a link planted in the tree.
	if typeOf(st.Mode) != TypeDir && st.Nlink > 1 {
		return *e, "", fmt.Errorf("file has %d hard links: %w", st.Nlink, errHardLinked)
	}
	var did []string
	if v.uid >= 0 || v.gid >= 0 {
		if err := unix.Fchown(fd, int(v.uid), int(v.gid)); err != nil {
			return *e, "", fmt.Errorf("chown: %w", err)
		}
		if v.uid >= 0 {
			did = append(did, fmt.Sprintf("owner %d → %d", e.UID, v.uid))
		}
		if v.gid >= 0 {
			did = append(did, fmt.Sprintf("group %d → %d", e.GID, v.gid))
		}
	}
	// chown clears setuid/setgid on files; always set the mode we want.
	if v.mode != e.Mode || len(did) > 0 {
		if err := unix.Fchmod(fd, v.mode); err != nil {
			return *e, "", fmt.Errorf("chmod: %w", err)
		}
		if v.mode != e.Mode {
			did = append(did, fmt.Sprintf("mode %s → %s", modeStr(e.Mode), modeStr(v.mode)))
		}
	}
	if err := unix.Fstat(fd, &st); err != nil {
		return *e, "", fmt.Errorf("fstat: %w", err)
	}
	after := *e
	after.Mode, after.UID, after.GID, after.Ctime = st.Mode&0o7777, st.Uid, st.Gid, st.Ctim.Nano()
	return after, strings.Join(did, ", "), nil
}
