package detect

import (
	"bytes"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

// golden is one testdata/<detector>.yaml file.
type golden struct {
	Detector        string   `yaml:"detector"`
	Positive        []sample `yaml:"positive"`
	Ignored         []string `yaml:"ignored"`
	Refused         []string `yaml:"refused"`
	Negative        []string `yaml:"negative"`
	JournalNegative []sample `yaml:"journal_negative"`
	Injection       []sample `yaml:"injection"`
}

type sample struct {
	Line       string `yaml:"line"`
	Unit       string `yaml:"unit"`
	Identifier string `yaml:"identifier"`
	Kind       string `yaml:"kind"`
	IP         string `yaml:"ip"`
	User       string `yaml:"user"`
	Port       string `yaml:"port"`
}

func (s sample) toLine() Line {
	return Line{Text: s.Line, Journal: s.Unit != "" || s.Identifier != "", Unit: s.Unit, Identifier: s.Identifier, Source: "test"}
}

// attacker is the address injection samples try to get blocked.
var attacker = netip.MustParseAddr("6.6.6.6")

func loadGolden(t *testing.T) map[string]golden {
	t.Helper()
	files, err := filepath.Glob("testdata/*.yaml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no golden files: %v", err)
	}
	out := map[string]golden{}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		var g golden
		dec := yaml.NewDecoder(bytes.NewReader(b))
		dec.KnownFields(true)
		if err := dec.Decode(&g); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		if want := strings.TrimSuffix(filepath.Base(f), ".yaml"); g.Detector != want {
			t.Fatalf("%s: detector %q, want %q", f, g.Detector, want)
		}
		out[g.Detector] = g
	}
	return out
}

// TestGolden runs every built-in detector over its samples: positive ones
// yield exactly the expected fields, ignored and refused ones their
// outcome, negative ones no signal, and injection samples either the
// expected address or nothing, never the attacker's.
func TestGolden(t *testing.T) {
	set, err := Builtin()
	if err != nil {
		t.Fatal(err)
	}
	goldens := loadGolden(t)
	for _, d := range set.Detectors() {
		g, ok := goldens[d.Name()]
		if !ok {
			t.Errorf("built-in detector %s has no testdata/%s.yaml", d.Name(), d.Name())
			continue
		}
		if len(g.Positive) == 0 || len(g.Negative) == 0 || len(g.Injection) == 0 {
			t.Errorf("%s: golden file needs positive, negative and injection samples", d.Name())
		}
		t.Run(d.Name(), func(t *testing.T) { checkGolden(t, d, g) })
	}
	for name := range goldens {
		if set.Get(name) == nil {
			t.Errorf("testdata/%s.yaml has no built-in detector", name)
		}
	}
}

func checkGolden(t *testing.T, d *Detector, g golden) {
	for _, s := range g.Positive {
		r := d.Match(s.toLine())
		if r.Outcome != Matched {
			t.Errorf("positive %q: outcome %v, want matched", s.Line, r.Outcome)
			continue
		}
		sig := r.Signal
		if got := sig.IP.String(); got != s.IP {
			t.Errorf("positive %q: ip %s, want %s", s.Line, got, s.IP)
		}
		if sig.User != s.User {
			t.Errorf("positive %q: user %q, want %q", s.Line, sig.User, s.User)
		}
		if sig.Attrs["port"] != s.Port {
			t.Errorf("positive %q: port %q, want %q", s.Line, sig.Attrs["port"], s.Port)
		}
		if sig.Kind != s.Kind {
			t.Errorf("positive %q: kind %q, want %q", s.Line, sig.Kind, s.Kind)
		}
		if sig.Source != d.Name() || sig.Attrs["detector"] != d.Name() || sig.Attrs["source"] != "test" {
			t.Errorf("positive %q: source %q attrs %v", s.Line, sig.Source, sig.Attrs)
		}
		if s.Unit != "" && sig.Attrs["unit"] != s.Unit {
			t.Errorf("positive %q: unit attr %q, want %q", s.Line, sig.Attrs["unit"], s.Unit)
		}
	}
	for _, l := range g.Ignored {
		if r := d.Match(Line{Text: l}); r.Outcome != Ignored {
			t.Errorf("ignored %q: outcome %v", l, r.Outcome)
		}
	}
	for _, l := range g.Refused {
		if r := d.Match(Line{Text: l}); r.Outcome != Refused {
			t.Errorf("refused %q: outcome %v", l, r.Outcome)
		}
	}
	for _, l := range g.Negative {
		if r := d.Match(Line{Text: l}); r.Outcome == Matched {
			t.Errorf("negative %q: matched %s", l, r.Signal.IP)
		}
	}
	for _, s := range g.JournalNegative {
		if r := d.Match(s.toLine()); r.Outcome != NotApplicable {
			t.Errorf("journal negative %q (%s, %s): outcome %v", s.Line, s.Unit, s.Identifier, r.Outcome)
		}
	}
	for _, s := range g.Injection {
		r := d.Match(s.toLine())
		var got string
		if r.Outcome == Matched {
			got = r.Signal.IP.String()
			if r.Signal.IP == attacker {
				t.Errorf("injection %q: yields the attacker's address", s.Line)
			}
		}
		if got != s.IP {
			t.Errorf("injection %q: ip %q (%v), want %q", s.Line, got, r.Outcome, s.IP)
		}
	}
}
