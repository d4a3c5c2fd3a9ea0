package integrity

import (
	"fmt"
	"strings"
)

// Bounds of the line diff. Files larger than MaxCopySize are not diffed at
// all; within them, the part between the common prefix and suffix is
// diffed with Myers' algorithm, whose work is O((N+M)·D): both are bounded.
const (
	diffMaxMiddle = 40000 // lines of old+new between the common prefix and suffix
	diffMaxEdits  = 1000  // D: lines removed + added
	diffContext   = 3     // unchanged lines around each change
	diffMaxLine   = 512   // bytes of one line shown; longer lines are cut
)

// errDiffTooLarge says the diff would exceed diffMaxMiddle or diffMaxEdits.
type errDiffTooLarge struct{ oldLines, newLines int }

func (e errDiffTooLarge) Error() string {
	return fmt.Sprintf("diff too large (old %d lines, new %d lines)", e.oldLines, e.newLines)
}

// splitLines splits text into lines without their "\n" (a final newline
// ends the last line, it does not start another).
func splitLines(s string) []string {
	if s == "" {
		return nil
	}
	s = strings.TrimSuffix(s, "\n")
	return strings.Split(s, "\n")
}

// edit is one line of the edit script: kind ' ', '-' or '+', with the index
// of the line in the old (for ' ' and '-') or new ('+') text.
type edit struct {
	kind byte
	i    int
}

// unifiedDiff returns the hunks of a unified diff from old to new (no
// ---/+++ header lines), or an errDiffTooLarge.
func unifiedDiff(oldText, newText string) ([]string, error) {
	a, b := splitLines(oldText), splitLines(newText)
	es, err := diffEdits(a, b)
	if err != nil {
		return nil, err
	}
	return hunks(es, a, b), nil
}

// diffEdits is the shortest edit script from a to b.
func diffEdits(a, b []string) ([]edit, error) {
	pre := 0
	for pre < len(a) && pre < len(b) && a[pre] == b[pre] {
		pre++
	}
	suf := 0
	for suf < len(a)-pre && suf < len(b)-pre && a[len(a)-1-suf] == b[len(b)-1-suf] {
		suf++
	}
	ma, mb := a[pre:len(a)-suf], b[pre:len(b)-suf]
	if len(ma)+len(mb) > diffMaxMiddle {
		return nil, errDiffTooLarge{len(a), len(b)}
	}
	// Lines as small integers: comparisons in the inner loop are cheap.
	ids := make(map[string]int32, len(ma)+len(mb))
	intern := func(ls []string) []int32 {
		out := make([]int32, len(ls))
		for i, l := range ls {
			id, ok := ids[l]
			if !ok {
				id = int32(len(ids))
				ids[l] = id
			}
			out[i] = id
		}
		return out
	}
	mid, ok := myers(intern(ma), intern(mb), diffMaxEdits)
	if !ok {
		return nil, errDiffTooLarge{len(a), len(b)}
	}
	es := make([]edit, 0, pre+len(mid)+suf)
	for i := range pre {
		es = append(es, edit{' ', i})
	}
	for _, e := range mid {
		e.i += pre // the prefix is as long in both
		es = append(es, e)
	}
	for i := len(a) - suf; i < len(a); i++ {
		es = append(es, edit{' ', i})
	}
	return es, nil
}

// myers is Myers' greedy O((N+M)·D) diff, giving up beyond maxD edits. It
// keeps, for each d, only the diagonals -d-1..d+1 it needs to trace back:
// O(D²) memory.
func myers(a, b []int32, maxD int) ([]edit, bool) {
	n, m := len(a), len(b)
	dmax := min(n+m, maxD)
	off := dmax + 1
	v := make([]int32, 2*dmax+3)
	var trace [][]int32
	found := false
	for d := 0; d <= dmax && !found; d++ {
		trace = append(trace, append([]int32(nil), v[off-d-1:off+d+2]...))
		for k := -d; k <= d; k += 2 {
			var x int
			if k == -d || (k != d && v[off+k-1] < v[off+k+1]) {
				x = int(v[off+k+1])
			} else {
				x = int(v[off+k-1]) + 1
			}
			y := x - k
			for x < n && y < m && a[x] == b[y] {
				x, y = x+1, y+1
			}
			v[off+k] = int32(x)
			if x >= n && y >= m {
				found = true
				break
			}
		}
	}
	if !found {
		return nil, false
	}
	var rev []edit
	x, y := n, m
	for d := len(trace) - 1; d >= 0; d-- {
		tv := trace[d] // v before step d, diagonals -d-1..d+1
		at := func(k int) int { return int(tv[k+d+1]) }
		k := x - y
		var pk int
		if k == -d || (k != d && at(k-1) < at(k+1)) {
			pk = k + 1
		} else {
			pk = k - 1
		}
		px := at(pk)
		py := px - pk
		for x > px && y > py {
			x, y = x-1, y-1
			rev = append(rev, edit{' ', x})
		}
		if d > 0 {
			if x == px {
				rev = append(rev, edit{'+', py})
			} else {
				rev = append(rev, edit{'-', px})
			}
		}
		x, y = px, py
	}
	for i, j := 0, len(rev)-1; i < j; i, j = i+1, j-1 {
		rev[i], rev[j] = rev[j], rev[i]
	}
	return rev, true
}

// hunks renders the edit script as unified-diff hunks with diffContext
// lines of context.
func hunks(es []edit, a, b []string) []string {
	var out []string
	line := func(kind byte, s string) string {
		return string(kind) + clip(s, diffMaxLine)
	}
	// Positions in old and new before each edit.
	ai, bi := make([]int, len(es)+1), make([]int, len(es)+1)
	for i, e := range es {
		ai[i+1], bi[i+1] = ai[i], bi[i]
		if e.kind != '+' {
			ai[i+1]++
		}
		if e.kind != '-' {
			bi[i+1]++
		}
	}
	for i := 0; i < len(es); {
		if es[i].kind == ' ' {
			i++
			continue
		}
		start := max(0, i-diffContext)
		end := i // one past the last change in this hunk
		for j := i; j < len(es); j++ {
			if es[j].kind != ' ' {
				end = j + 1
			} else if j-end >= 2*diffContext {
				break
			}
		}
		stop := min(len(es), end+diffContext)
		oldN, newN := ai[stop]-ai[start], bi[stop]-bi[start]
		out = append(out, fmt.Sprintf("@@ -%s +%s @@", hunkRange(ai[start], oldN), hunkRange(bi[start], newN)))
		for _, e := range es[start:stop] {
			switch e.kind {
			case ' ', '-':
				out = append(out, line(e.kind, a[e.i]))
			case '+':
				out = append(out, line('+', b[e.i]))
			}
		}
		i = stop
	}
	return out
}

func hunkRange(start, n int) string {
	if n == 0 {
		return fmt.Sprintf("%d,0", start)
	}
	if n == 1 {
		return fmt.Sprintf("%d", start+1)
	}
	return fmt.Sprintf("%d,%d", start+1, n)
}
