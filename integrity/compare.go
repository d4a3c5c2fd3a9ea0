package integrity

import (
	"fmt"
	"slices"
	"time"
)

// Checker judges one path: its change against the baseline (explained by
// dpkg or not), unreadable files, and permission rules (with remediation).
type Checker struct {
	Rules *Rules
	Dpkg  *Dpkg // nil: no package-manager awareness
	Now   func() time.Time
	// MaxHash is the scanner's max_hash_size: a larger file was not
	// hashed (0: no limit).
	MaxHash int64
}

// unhashed reports whether e is a regular file the scanner did not hash
// because of its size.
func (c *Checker) unhashed(e *Entry) bool {
	return c.MaxHash > 0 && e.Type == TypeFile && e.Size > c.MaxHash
}

// Judge returns the findings for path, whose baseline state is base and
// current state cur, and the state after any remediation.
func (c *Checker) Judge(path string, base, cur Entry) ([]Finding, Entry) {
	now := c.Now()
	var out []Finding
	if f := classify(path, &base, &cur, now); f != nil {
		if cur.Type == TypeFile && !c.unhashed(&cur) && (f.Kind == KindAdded || onlyContent(f.Changes)) {
			if pkg := c.Dpkg.Explain(path); pkg != "" {
				f.Kind, f.Severity, f.Package = KindPackage, SevLow, pkg
				f.Detail = "content matches package " + pkg + ": " + f.Detail
			}
		}
		out = append(out, *f)
	} else if cur.Err != "" {
		out = append(out, Finding{Time: now, Kind: KindUnreadable, Severity: SevLow, Path: path, Detail: cur.Err})
	}
	if c.unhashed(&cur) {
		out = append(out, Finding{Time: now, Kind: KindNotHashed, Severity: SevLow, Path: path,
			Detail: fmt.Sprintf("size %d bytes is over integrity.max_hash_size (%d): content not hashed, recorded by metadata only", cur.Size, c.MaxHash)})
	}
	perm, after := c.Rules.Check(path, cur, now)
	return append(out, perm...), after
}

func onlyContent(cs []Change) bool {
	if len(cs) == 0 {
		return false
	}
	for _, c := range cs {
		if !contentish[c.Attr] {
			return false
		}
	}
	return true
}

// Compare judges every path in the baseline or the current scan, in path
// order. An unchanged tree without rule violations gives nothing.
func (c *Checker) Compare(base, cur map[string]Entry) []Finding {
	var out []Finding
	for _, p := range unionPaths(base, cur) {
		fs, _ := c.Judge(p, base[p], cur[p])
		out = append(out, fs...)
	}
	return out
}

func unionPaths(ms ...map[string]Entry) []string {
	n := 0
	for _, m := range ms {
		n += len(m)
	}
	seen := make(map[string]struct{}, n)
	ps := make([]string, 0, n)
	for _, m := range ms {
		for p := range m {
			if _, ok := seen[p]; !ok {
				seen[p] = struct{}{}
				ps = append(ps, p)
			}
		}
	}
	slices.Sort(ps)
	return ps
}
