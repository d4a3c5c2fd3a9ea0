package integrity

import (
	"errors"
	"path"
	"path/filepath"
	"strings"
)

// glob is a compiled pattern: either a base-name pattern (no "/") or a
// whole-path pattern split into segments, where "**" matches any number of
// segments.
type glob struct {
	base string   // base-name pattern, when segs is nil
	segs []string // whole-path segments
}

func validGlob(g string) error {
	if g == "" {
		return errors.New("empty pattern")
	}
	if strings.Contains(g, "/") && !strings.HasPrefix(g, "/") {
		return errors.New("a pattern with a slash must be absolute")
	}
	for _, s := range strings.Split(g, "/") {
		if s == "**" {
			continue
		}
		if _, err := path.Match(s, ""); err != nil {
			return err
		}
	}
	return nil
}

func compileGlob(g string) glob {
	if !strings.Contains(g, "/") {
		return glob{base: g}
	}
	return glob{segs: strings.Split(strings.TrimPrefix(g, "/"), "/")}
}

func (g glob) match(p string) bool {
	if g.segs == nil {
		ok, _ := path.Match(g.base, filepath.Base(p))
		return ok
	}
	return matchSegs(g.segs, strings.Split(strings.TrimPrefix(p, "/"), "/"))
}

func matchSegs(pat, name []string) bool {
	for len(pat) > 0 {
		if pat[0] == "**" {
			if len(pat) == 1 {
				return true
			}
			for i := 0; i <= len(name); i++ {
				if matchSegs(pat[1:], name[i:]) {
					return true
				}
			}
			return false
		}
		if len(name) == 0 {
			return false
		}
		if ok, _ := path.Match(pat[0], name[0]); !ok {
			return false
		}
		pat, name = pat[1:], name[1:]
	}
	return len(name) == 0
}

// Selection decides which paths belong to the watched set.
type Selection struct {
	roots   []selRoot
	exclude []glob
}

type selRoot struct {
	path      string
	recursive bool
	exclude   []glob
}

// NewSelection compiles the configured paths and excludes. cfg must have
// passed Validate.
func NewSelection(cfg Config) *Selection {
	s := &Selection{}
	for _, g := range cfg.Exclude {
		s.exclude = append(s.exclude, compileGlob(g))
	}
	for _, p := range cfg.Paths {
		r := selRoot{path: p.Path, recursive: p.Recursive == nil || *p.Recursive}
		for _, g := range p.Exclude {
			r.exclude = append(r.exclude, compileGlob(g))
		}
		s.roots = append(s.roots, r)
	}
	return s
}

// Roots returns the configured root paths.
func (s *Selection) Roots() []string {
	out := make([]string, len(s.roots))
	for i, r := range s.roots {
		out[i] = r.path
	}
	return out
}

// Selected reports whether p (absolute, clean) is in the selection: under a
// root (at any depth when recursive, the root or a direct entry otherwise)
// and neither p nor any directory between the root and p is excluded.
func (s *Selection) Selected(p string) bool {
	for i := range s.roots {
		if s.selectedBy(&s.roots[i], p) {
			return true
		}
	}
	return false
}

func (s *Selection) selectedBy(r *selRoot, p string) bool {
	rel, ok := under(r.path, p)
	if !ok {
		return false
	}
	if !r.recursive && strings.Contains(rel, "/") {
		return false
	}
	// Check p and each ancestor up to (not including) the root.
	for q := p; q != r.path && len(q) > len(r.path); q = filepath.Dir(q) {
		if s.excluded(r, q) {
			return false
		}
	}
	return !s.excluded(r, r.path)
}

// Descend reports whether the walker should enter directory p, found under
// root r.
func (s *Selection) excluded(r *selRoot, p string) bool {
	for _, g := range s.exclude {
		if g.match(p) {
			return true
		}
	}
	for _, g := range r.exclude {
		if g.match(p) {
			return true
		}
	}
	return false
}

// under returns p relative to root, and whether p is root or below it.
func under(root, p string) (string, bool) {
	if p == root {
		return "", true
	}
	if root == "/" {
		return strings.TrimPrefix(p, "/"), strings.HasPrefix(p, "/")
	}
	if strings.HasPrefix(p, root) && len(p) > len(root) && p[len(root)] == '/' {
		return p[len(root)+1:], true
	}
	return "", false
}

// watchable reports whether directory p gets a watch: it is a root, or
// selected under a recursive root.
func (s *Selection) watchable(p string) bool {
	for i := range s.roots {
		r := &s.roots[i]
		if (p == r.path || r.recursive) && s.selectedBy(r, p) {
			return true
		}
	}
	return false
}
