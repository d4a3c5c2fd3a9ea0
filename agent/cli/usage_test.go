package cli

import (
	"bytes"
	"context"
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/spf13/cobra"
)

// TestUsageErrorsExit2: every kind of command-line mistake exits 2 with
// the usage hint, before anything is sent (the socket does not exist).
func TestUsageErrorsExit2(t *testing.T) {
	for _, args := range [][]string{
		{"bogus"},               // unknown command
		{"integrity", "bogus"},  // unknown subcommand of a group (was: help, exit 0)
		{"audit", "bogus"},      //
		{"evidence", "bogus"},   //
		{"completion", "bogus"}, //
		{"--socket", "/x", "integrity", "bogus"},
		{"status", "extra"},               // cobra.NoArgs
		{"signal"},                        // cobra.ExactArgs(1)
		{"signal", "a", "b"},              //
		{"integrity", "accept"},           // cobra.MinimumNArgs(1)
		{"evidence", "show"},              // cobra.ExactArgs(1)
		{"status", "--bogus"},             // unknown flag
		{"status", "-z"},                  // unknown shorthand
		{"block", "203.0.113.7", "--for"}, // flag needs an argument
		{"lockdown", "--isolate=maybe"},   // invalid flag value
		{"block"},                         // no targets (the command's own check)
		{"report", "--format", "pdf"},     //
	} {
		var stderr bytes.Buffer
		code := Main(context.Background(), append([]string{"--socket", "/nonexistent/s.sock"}, args...), strings.NewReader(""), io.Discard, &stderr)
		if code != ExitUsage || !strings.Contains(stderr.String(), "Run 'parry --help' for usage.") {
			t.Errorf("parry %v: exit %d, want %d with the usage hint; stderr %q", args, code, ExitUsage, stderr.String())
		}
	}
}

// TestGroupsWithoutSubcommandShowHelp: a group alone still prints its
// help and succeeds.
func TestGroupsWithoutSubcommandShowHelp(t *testing.T) {
	for _, args := range [][]string{{}, {"integrity"}, {"audit"}, {"evidence"}, {"integrity", "--help"}, {"help", "integrity"}} {
		var stdout, stderr bytes.Buffer
		code := Main(context.Background(), args, strings.NewReader(""), &stdout, &stderr)
		if code != ExitOK || !strings.Contains(stdout.String(), "Available Commands:") {
			t.Errorf("parry %v: exit %d, stdout %q, stderr %q; want its help and 0", args, code, stdout.String(), stderr.String())
		}
	}
}

// TestArgValidatorsAreTyped: the argument validators return *UsageError,
// so Main needs no look at the message.
func TestArgValidatorsAreTyped(t *testing.T) {
	a := &App{Stdout: io.Discard, Stderr: io.Discard, Getenv: func(string) string { return "" }}
	root := a.command(nil)
	n := 0
	walk(root, func(c *cobra.Command) {
		if c.Args == nil {
			return
		}
		n++
		for _, args := range [][]string{{"x", "y", "z"}, nil} {
			if err := c.Args(c, args); err != nil {
				var ue *UsageError
				if !errors.As(err, &ue) {
					t.Errorf("%s %v: %T %v, want a *UsageError", c.CommandPath(), args, err, err)
				}
			}
		}
	})
	if n < 10 {
		t.Fatalf("only %d commands with argument validators", n)
	}
}
