// Command testsummary reads `go test -json` on stdin and prints what a plain
// `go test` prints (each package's result and the output of failed tests),
// then the skipped tests with their reasons and one closing line: how many
// tests ran, passed, failed and skipped, and whether a root-only test
// skipped. `make test` pipes the whole suite through it.
//
// A root-only test skips when not root with a message that says "needs root"
// (netns.RequireRoot; under CI it fails instead). A run in which such a test
// skipped is a failure of the suite: testsummary exits 1 then, as it does
// when a test or a package failed or when no test ran at all.
package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
)

func main() {
	os.Exit(run(os.Stdin, os.Stdout))
}

// event is one line of `go test -json` (see `go doc cmd/test2json`).
type event struct {
	Action     string
	Package    string
	ImportPath string // build-output
	Test       string
	Output     string
}

// maxHeld bounds the output held for one test until it ends; a failed test
// prints its first maxHeld bytes.
const maxHeld = 1 << 20

type summary struct {
	out                  io.Writer
	held                 map[string]*strings.Builder // package + test -> output so far
	packages             map[string]bool
	pass, fail, skip     int
	failedPkgs           []string
	skipped, rootSkipped []string            // "pkg TestX: reason"
	testsOf              map[string][]string // package -> tests not yet ended
}

func run(in io.Reader, out io.Writer) int {
	s := &summary{out: out, held: map[string]*strings.Builder{}, packages: map[string]bool{}, testsOf: map[string][]string{}}
	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 0, 64<<10), 16<<20)
	for sc.Scan() {
		var e event
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			fmt.Fprintf(out, "%s\n", sc.Bytes()) // not an event (go vet, a build message): pass it on
			continue
		}
		s.add(e)
	}
	if err := sc.Err(); err != nil {
		fmt.Fprintf(out, "testsummary: reading go test -json: %v\n", err)
		return 1
	}
	return s.finish()
}

func (s *summary) add(e event) {
	key := e.Package + " " + e.Test
	switch {
	case e.Action == "build-output":
		fmt.Fprint(s.out, e.Output)
	case e.Test == "":
		s.addPackage(e)
	case e.Action == "run":
		s.held[key] = &strings.Builder{}
		s.testsOf[e.Package] = append(s.testsOf[e.Package], e.Test)
	case e.Action == "output":
		if b := s.held[key]; b != nil && b.Len() < maxHeld {
			b.WriteString(e.Output)
		}
	case e.Action == "pass", e.Action == "fail", e.Action == "skip":
		s.end(e, key)
	}
}

func (s *summary) addPackage(e event) {
	if e.Package != "" {
		s.packages[e.Package] = true
	}
	switch e.Action {
	case "output":
		if e.Output != "PASS\n" { // the -v line plain go test does not print
			fmt.Fprint(s.out, e.Output)
		}
	case "fail":
		s.failedPkgs = append(s.failedPkgs, e.Package)
		// A panic or a timeout ends the package with tests still running:
		// their output says why.
		for _, t := range s.testsOf[e.Package] {
			if b := s.held[e.Package+" "+t]; b != nil {
				fmt.Fprint(s.out, plain(b.String()))
			}
		}
	}
}

func (s *summary) end(e event, key string) {
	b := s.held[key]
	delete(s.held, key)
	s.testsOf[e.Package] = slices.DeleteFunc(s.testsOf[e.Package], func(t string) bool { return t == e.Test })
	text := ""
	if b != nil {
		text = b.String()
	}
	switch e.Action {
	case "pass":
		s.pass++
	case "fail":
		s.fail++
		fmt.Fprint(s.out, plain(text))
	case "skip":
		s.skip++
		line := fmt.Sprintf("%s %s: %s", e.Package, e.Test, reason(text))
		s.skipped = append(s.skipped, line)
		if strings.Contains(strings.ToLower(text), "needs root") {
			s.rootSkipped = append(s.rootSkipped, line)
		}
	}
}

// plain drops the lines only -v prints (=== RUN, PAUSE, CONT, NAME).
func plain(s string) string {
	var b strings.Builder
	for l := range strings.Lines(s) {
		if !strings.HasPrefix(l, "=== ") {
			b.WriteString(l)
		}
	}
	return b.String()
}

// reason is the last line a skipped test logged (its t.Skip message).
func reason(s string) string {
	r := ""
	for l := range strings.Lines(s) {
		if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "=== ") && !strings.HasPrefix(l, "--- ") {
			r = l
		}
	}
	if r == "" {
		return "(no reason given)"
	}
	return r
}

func (s *summary) finish() int {
	const listed = 30
	if len(s.skipped) > 0 {
		fmt.Fprintf(s.out, "\nskipped:\n")
		for i, l := range s.skipped {
			if i == listed {
				fmt.Fprintf(s.out, "  ... and %d more\n", len(s.skipped)-listed)
				break
			}
			fmt.Fprintf(s.out, "  %s\n", l)
		}
	}
	total := s.pass + s.fail + s.skip
	line := fmt.Sprintf("%d tests ran (subtests included) in %d packages: %d passed, %d failed, %d skipped", total, len(s.packages), s.pass, s.fail, s.skip)
	code := 0
	switch {
	case len(s.rootSkipped) > 0:
		line += fmt.Sprintf("; %d ROOT-ONLY TESTS SKIPPED: this run does not count (run make test as root; CI does)", len(s.rootSkipped))
		code = 1
	default:
		line += "; no root-only test skipped"
	}
	if len(s.failedPkgs) > 0 {
		line += fmt.Sprintf("; FAILED packages: %s", strings.Join(s.failedPkgs, " "))
		code = 1
	}
	if s.fail > 0 || total == 0 {
		code = 1
	}
	verdict := "ok"
	if code != 0 {
		verdict = "FAIL"
	}
	fmt.Fprintf(s.out, "\n%s: %s\n", verdict, line)
	return code
}
