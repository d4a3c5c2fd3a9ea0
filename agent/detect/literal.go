package detect

import (
	"regexp/syntax"
	"slices"
	"sort"
	"strings"
	"unicode/utf8"
)

// maxNeedles is how many inner literals a pattern's precheck tests;
// maxPrefixes how many alternative literal starts it tries.
const (
	maxNeedles  = 2
	maxPrefixes = 16
)

// leadingLiterals returns the literals one of which every match of re
// starts with (each as long as it can be), or nil when some match can
// start with anything. exact reports that re matches exactly those
// strings.
func leadingLiterals(re *syntax.Regexp) (set []string, exact bool) {
	switch re.Op {
	case syntax.OpLiteral:
		if re.Flags&syntax.FoldCase != 0 {
			return nil, false
		}
		return []string{string(re.Rune)}, true
	case syntax.OpBeginText, syntax.OpEmptyMatch:
		return []string{""}, true
	case syntax.OpCapture:
		return leadingLiterals(re.Sub[0])
	case syntax.OpQuest:
		sub, ex := leadingLiterals(re.Sub[0])
		if sub == nil || !ex {
			return nil, false
		}
		return append([]string{""}, sub...), true
	case syntax.OpAlternate:
		exact = true
		for _, b := range re.Sub {
			sub, ex := leadingLiterals(b)
			if sub == nil {
				return nil, false
			}
			set = append(set, sub...)
			exact = exact && ex
		}
		if len(set) > maxPrefixes {
			return nil, false
		}
		return set, exact
	case syntax.OpConcat:
		set = []string{""}
		for _, c := range re.Sub {
			sub, ex := leadingLiterals(c)
			if sub == nil || len(set)*len(sub) > maxPrefixes {
				return nonEmpty(set), false
			}
			next := make([]string, 0, len(set)*len(sub))
			for _, a := range set {
				for _, b := range sub {
					next = append(next, a+b)
				}
			}
			set = next
			if !ex {
				return nonEmpty(set), false
			}
		}
		return set, true
	}
	return nil, false
}

// nonEmpty returns set, or nil if one of its strings is empty (then a
// match may start with anything).
func nonEmpty(set []string) []string {
	for _, s := range set {
		if s == "" {
			return nil
		}
	}
	return set
}

// requiredLiterals returns the literals one of which every match of re
// starts with (nil: no such literal) and up to maxNeedles other literals
// (of 3 bytes or more) every match contains, the rarest first (see score).
// They let Match skip the regexp, with strings.HasPrefix and
// strings.Contains, for the ~95% of lines that cannot match.
func requiredLiterals(re *syntax.Regexp) (prefixes []string, needles []string) {
	var prefix string
	var items []item
	flatten(re, &items)
	var runs []string
	var cur []byte
	atStart := true
	flush := func() {
		if atStart {
			prefix = string(cur)
			atStart = false
		} else if len(cur) >= 3 {
			runs = append(runs, string(cur))
		}
		cur = cur[:0]
	}
	for _, it := range items {
		if it.barrier {
			flush()
			continue
		}
		cur = append(cur, it.lit...)
	}
	flush()
	sort.SliceStable(runs, func(i, j int) bool { return score(runs[i]) > score(runs[j]) })
	if lead, _ := leadingLiterals(re); len(lead) > 1 || len(lead) == 1 && len(lead[0]) > len(prefix) {
		prefixes = nonEmpty(lead)
	} else if prefix != "" {
		prefixes = []string{prefix}
	}
	// A needle every prefix holds tests nothing the prefix has not.
	runs = slices.DeleteFunc(runs, func(n string) bool {
		return len(prefixes) > 0 && !slices.ContainsFunc(prefixes, func(p string) bool { return !strings.Contains(p, n) })
	})
	if len(runs) > maxNeedles {
		runs = runs[:maxNeedles]
	}
	return prefixes, runs
}

// score ranks literals by how rarely a line holds them: longer is rarer,
// and digits (" 404 ", " ssh2") are rarer in logs than words.
func score(s string) int {
	n := len(s)
	for i := 0; i < len(s); i++ {
		if s[i] >= '0' && s[i] <= '9' {
			n += 4
		}
	}
	return n
}

type item struct {
	lit     string
	barrier bool
}

// flatten turns re into literal pieces and barriers (anything of unknown
// text between them), keeping only what every match must contain.
func flatten(re *syntax.Regexp, out *[]item) {
	barrier := func() { *out = append(*out, item{barrier: true}) }
	switch re.Op {
	case syntax.OpLiteral:
		if re.Flags&syntax.FoldCase != 0 {
			barrier()
			return
		}
		*out = append(*out, item{lit: string(re.Rune)})
	case syntax.OpBeginText, syntax.OpBeginLine, syntax.OpEndText, syntax.OpEndLine,
		syntax.OpWordBoundary, syntax.OpNoWordBoundary, syntax.OpEmptyMatch:
		// zero width: adjacency is kept
	case syntax.OpCapture:
		flatten(re.Sub[0], out)
	case syntax.OpConcat:
		for _, s := range re.Sub {
			flatten(s, out)
		}
	case syntax.OpPlus:
		barrier()
		flatten(re.Sub[0], out)
		barrier()
	case syntax.OpRepeat:
		barrier()
		if re.Min >= 1 {
			flatten(re.Sub[0], out)
			barrier()
		}
	default:
		barrier()
	}
}

// lengthBounds returns the fewest and most bytes a match of re can have
// (max -1: no bound).
func lengthBounds(re *syntax.Regexp) (lo, hi int) {
	switch re.Op {
	case syntax.OpLiteral:
		if re.Flags&syntax.FoldCase != 0 {
			return len(re.Rune), utf8.UTFMax * len(re.Rune)
		}
		n := 0
		for _, r := range re.Rune {
			n += utf8.RuneLen(r)
		}
		return n, n
	case syntax.OpCharClass:
		if len(re.Rune) == 0 {
			return 0, 0
		}
		return 1, max(1, utf8.RuneLen(re.Rune[len(re.Rune)-1]))
	case syntax.OpAnyChar, syntax.OpAnyCharNotNL:
		return 1, utf8.UTFMax
	case syntax.OpCapture:
		return lengthBounds(re.Sub[0])
	case syntax.OpStar:
		return 0, -1
	case syntax.OpPlus:
		l, _ := lengthBounds(re.Sub[0])
		return l, -1
	case syntax.OpQuest:
		_, h := lengthBounds(re.Sub[0])
		return 0, h
	case syntax.OpRepeat:
		l, h := lengthBounds(re.Sub[0])
		lo = l * re.Min
		if re.Max < 0 || h < 0 {
			return lo, -1
		}
		return lo, h * re.Max
	case syntax.OpConcat:
		for _, s := range re.Sub {
			l, h := lengthBounds(s)
			lo += l
			if hi >= 0 {
				if h < 0 {
					hi = -1
				} else {
					hi += h
				}
			}
		}
		return lo, hi
	case syntax.OpAlternate:
		lo = -1
		for _, s := range re.Sub {
			l, h := lengthBounds(s)
			if lo < 0 || l < lo {
				lo = l
			}
			if hi >= 0 && (h < 0 || h > hi) {
				hi = h
			}
		}
		return max(lo, 0), hi
	}
	return 0, 0 // zero-width assertions, empty match
}
