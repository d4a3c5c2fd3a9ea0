package cli

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/spf13/cobra"
)

// TestJSONCommandsListed: testdata/json_commands.txt names every command
// with a --json flag; test/e2e runs each against a real parryd and checks
// the output is one object with "ok". A new --json command must be added
// there (and to docs/cli.md).
func TestJSONCommandsListed(t *testing.T) {
	a := &App{}
	var got []string
	walk(a.command(nil), func(c *cobra.Command) {
		if c.Flags().Lookup("json") != nil {
			got = append(got, strings.TrimPrefix(c.CommandPath(), "parry "))
		}
	})
	slices.Sort(got)
	b, err := os.ReadFile(filepath.Join("testdata", "json_commands.txt"))
	if err != nil {
		t.Fatal(err)
	}
	var want []string
	for l := range strings.Lines(string(b)) {
		if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "#") {
			want = append(want, l)
		}
	}
	if !slices.Equal(got, want) {
		t.Errorf("commands with --json:\n got %q\nwant %q (testdata/json_commands.txt)", got, want)
	}
}
