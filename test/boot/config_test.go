package boot

import (
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/parryhq/parry/agent"
)

// settingLine matches a commented-out setting in packaging/parry.yaml:
// '#' directly followed by a key, or by two spaces (a nested key). Prose
// comments are '# text'.
var settingLine = regexp.MustCompile(`(?m)^#([a-z]|  )`)

// TestDefaultConfigFile checks that the conffile the package installs is
// the built-in defaults: as shipped (all commented out) and with every
// setting uncommented.
func TestDefaultConfigFile(t *testing.T) {
	shipped := filepath.Join(repoRoot(t), "packaging", "parry.yaml")
	b, err := os.ReadFile(shipped)
	if err != nil {
		t.Fatal(err)
	}
	uncommented := filepath.Join(t.TempDir(), "parry.yaml")
	if err := os.WriteFile(uncommented, settingLine.ReplaceAll(b, []byte("$1")), 0o644); err != nil {
		t.Fatal(err)
	}
	want := agent.DefaultConfig()
	if err := want.Validate(); err != nil {
		t.Fatalf("built-in defaults do not validate: %v", err)
	}
	all := cmp.Exporter(func(reflect.Type) bool { return true })
	for _, path := range []string{shipped, uncommented} {
		got, err := agent.LoadConfig(path, false)
		if err != nil {
			t.Fatalf("%s: %v", filepath.Base(path), err)
		}
		if diff := cmp.Diff(want, got, all, cmpopts.EquateEmpty()); diff != "" {
			t.Errorf("%s differs from the built-in defaults (-default +file):\n%s", path, diff)
		}
	}
	if n := len(settingLine.FindAll(b, -1)); n < 15 {
		t.Errorf("only %d settings found in %s; the regexp or the file is off", n, shipped)
	}
}
