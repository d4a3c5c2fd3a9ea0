package main

import (
	"strings"
	"testing"
)

const (
	passing = `{"Action":"start","Package":"p/a"}
{"Action":"run","Package":"p/a","Test":"TestOK"}
{"Action":"output","Package":"p/a","Test":"TestOK","Output":"=== RUN   TestOK\n"}
{"Action":"output","Package":"p/a","Test":"TestOK","Output":"    a_test.go:9: chatter of a passing test\n"}
{"Action":"output","Package":"p/a","Test":"TestOK","Output":"--- PASS: TestOK (0.00s)\n"}
{"Action":"pass","Package":"p/a","Test":"TestOK"}
{"Action":"run","Package":"p/a","Test":"TestHelper"}
{"Action":"output","Package":"p/a","Test":"TestHelper","Output":"    a_test.go:20: helper process for TestOK\n"}
{"Action":"output","Package":"p/a","Test":"TestHelper","Output":"--- SKIP: TestHelper (0.00s)\n"}
{"Action":"skip","Package":"p/a","Test":"TestHelper"}
{"Action":"output","Package":"p/a","Output":"PASS\n"}
{"Action":"output","Package":"p/a","Output":"ok  \tp/a\t0.01s\n"}
{"Action":"pass","Package":"p/a"}
`
	rootSkip = `{"Action":"run","Package":"p/b","Test":"TestKernel"}
{"Action":"output","Package":"p/b","Test":"TestKernel","Output":"    netns.go:40: skipping: needs root for network namespaces and nftables\n"}
{"Action":"output","Package":"p/b","Test":"TestKernel","Output":"--- SKIP: TestKernel (0.00s)\n"}
{"Action":"skip","Package":"p/b","Test":"TestKernel"}
{"Action":"output","Package":"p/b","Output":"ok  \tp/b\t0.01s\n"}
{"Action":"pass","Package":"p/b"}
`
	failing = `{"Action":"run","Package":"p/c","Test":"TestBad"}
{"Action":"output","Package":"p/c","Test":"TestBad","Output":"=== RUN   TestBad\n"}
{"Action":"output","Package":"p/c","Test":"TestBad","Output":"    c_test.go:5: the reason it failed\n"}
{"Action":"output","Package":"p/c","Test":"TestBad","Output":"--- FAIL: TestBad (0.00s)\n"}
{"Action":"fail","Package":"p/c","Test":"TestBad"}
{"Action":"output","Package":"p/c","Output":"FAIL\tp/c\t0.01s\n"}
{"Action":"fail","Package":"p/c"}
`
	// a timeout panic: the package fails with a test still running
	panicked = `{"Action":"run","Package":"p/d","Test":"TestHang"}
{"Action":"output","Package":"p/d","Test":"TestHang","Output":"panic: test timed out after 1s\n\trunning tests:\n\t\tTestHang (1s)\n"}
{"Action":"output","Package":"p/d","Output":"FAIL\tp/d\t1.01s\n"}
{"Action":"fail","Package":"p/d"}
`
)

func summarize(t *testing.T, in string) (string, int) {
	t.Helper()
	var out strings.Builder
	code := run(strings.NewReader(in), &out)
	return out.String(), code
}

func TestSummary(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		code     int
		want     []string // in the output
		notWant  []string
	}{
		{"passing", passing, 0,
			[]string{"ok  \tp/a\t0.01s\n", "skipped:\n  p/a TestHelper: a_test.go:20: helper process for TestOK\n",
				"\nok: 2 tests ran (subtests included) in 1 packages: 1 passed, 0 failed, 1 skipped; no root-only test skipped\n"},
			[]string{"chatter of a passing test", "PASS\n", "=== RUN"}},
		{"root-only skip", passing + rootSkip, 1,
			[]string{"p/b TestKernel: netns.go:40: skipping: needs root", "FAIL: 3 tests ran (subtests included) in 2 packages: 1 passed, 0 failed, 2 skipped; 1 ROOT-ONLY TESTS SKIPPED"},
			nil},
		{"failing", passing + failing, 1,
			[]string{"c_test.go:5: the reason it failed\n--- FAIL: TestBad", "FAIL\tp/c\t0.01s\n", "1 failed", "FAILED packages: p/c"},
			[]string{"=== RUN"}},
		{"panic", passing + panicked, 1,
			[]string{"panic: test timed out after 1s", "FAILED packages: p/d"}, nil},
		{"nothing ran", "", 1, []string{"FAIL: 0 tests ran"}, nil},
		{"not json passes through", "# p/e\nvet: something\n" + passing, 0, []string{"# p/e\nvet: something\n"}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, code := summarize(t, tc.in)
			if code != tc.code {
				t.Errorf("exit %d, want %d\n%s", code, tc.code, out)
			}
			for _, w := range tc.want {
				if !strings.Contains(out, w) {
					t.Errorf("output lacks %q:\n%s", w, out)
				}
			}
			for _, w := range tc.notWant {
				if strings.Contains(out, w) {
					t.Errorf("output has %q:\n%s", w, out)
				}
			}
		})
	}
}
