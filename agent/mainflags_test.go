package agent

import (
	"bytes"
	"errors"
	"flag"
	"strings"
	"testing"
)

// TestParseFlagsNeverExits: --version and --help print and return a
// sentinel for cmd/parryd to exit on; a bad command line is ErrUsage. (On
// main, --version called os.Exit inside the library.)
func TestParseFlagsNeverExits(t *testing.T) {
	tests := []struct {
		args   []string
		want   error
		output string
	}{
		{[]string{"--version"}, ErrVersion, "parryd " + Version},
		{[]string{"--help"}, flag.ErrHelp, "Usage: parryd [flags]"},
		{[]string{"--bogus"}, ErrUsage, "flag provided but not defined"},
		{[]string{"extra"}, ErrUsage, ""},
		{[]string{"--table", "t", "--check-config"}, nil, ""},
	}
	for _, tt := range tests {
		var out bytes.Buffer
		m := &Main{Stderr: &out}
		err := m.ParseFlags(tt.args)
		if tt.want == nil && err != nil || tt.want != nil && !errors.Is(err, tt.want) {
			t.Errorf("%v: err = %v, want %v", tt.args, err, tt.want)
		}
		if !strings.Contains(out.String(), tt.output) {
			t.Errorf("%v: printed %q, want %q in it", tt.args, out.String(), tt.output)
		}
	}
}
