package cli

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/parryhq/parry/agent/api"
	"github.com/parryhq/parry/agent/detect"
	"github.com/spf13/cobra"
	"go.yaml.in/yaml/v3"
)

// defaultConfigPath is parryd's config, whose sources.detectors `parry
// source test` also knows.
const defaultConfigPath = "/etc/parry/parry.yaml"

func (a *App) sourceCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "source", Short: "Log sources and detectors: their status, and a dry run of the detectors over a file"}
	cmd.AddCommand(a.sourceStatusCmd(), a.sourceTestCmd())
	return cmd
}

func (a *App) sourceStatusCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Per log source: lines read, matched, dropped and cut, last line, lag, errors, position",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var st api.SourcesStatus
			if err := a.call(map[string]any{"op": "source_status"}, &st); err != nil {
				return err
			}
			if asJSON {
				if st.Sources == nil {
					st.Sources = []api.SourceStatus{}
				}
				return printResult(a.Stdout, true, st)
			}
			if len(st.Sources) == 0 {
				fmt.Fprintln(a.Stdout, "no log sources")
				return nil
			}
			for i, s := range st.Sources {
				if i > 0 {
					fmt.Fprintln(a.Stdout)
				}
				printSource(a.Stdout, s)
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func printSource(w io.Writer, s api.SourceStatus) {
	state := "reading"
	if !s.Available {
		state = "UNAVAILABLE (retrying)"
	}
	where := s.Kind
	if s.Path != "" {
		where += " " + s.Path
	}
	fmt.Fprintf(w, "%s (%s): %s; detectors %s\n", oneLine(s.Name), oneLine(where), state, strings.Join(s.Detectors, ", "))
	fmt.Fprintf(w, "  lines %d: matched %d, ignored %d, missed %d, refused %d; cut %d, dropped %d; read back %d; decisions %d\n",
		s.Lines, s.Matched, s.Ignored, s.Missed, s.Refused, s.Cut, s.Dropped, s.Replayed, s.Decisions)
	last := "never"
	if !s.LastLine.IsZero() {
		last = s.LastLine.Format(time.RFC3339) + " (" + api.FormatDuration(time.Since(s.LastLine).Truncate(time.Second)) + " ago)"
	}
	fmt.Fprintf(w, "  last line: %s", last)
	if s.Lag != "" {
		fmt.Fprintf(w, ", lag %s", s.Lag)
	}
	fmt.Fprintln(w)
	if s.Restarts > 0 || s.Rotations > 0 || s.Lost > 0 {
		fmt.Fprintf(w, "  journalctl restarts %d, rotations %d, lost %d\n", s.Restarts, s.Rotations, s.Lost)
	}
	if s.Error != "" {
		fmt.Fprintf(w, "  error: %s\n", oneLine(s.Error))
	}
	if s.Warning != "" {
		fmt.Fprintf(w, "  WARNING: %s\n", oneLine(s.Warning))
	}
	if len(s.Position) > 0 {
		fmt.Fprintf(w, "  position: %s\n", s.Position)
	}
}

// sourceTestSamples is how many sample lines per outcome `parry source
// test` keeps for each detector.
const sourceTestSamples = 5

type testSample struct {
	Line    string `json:"line"`
	Kind    string `json:"kind,omitempty"`
	IP      string `json:"ip,omitempty"`
	User    string `json:"user,omitempty"`
	Port    string `json:"port,omitempty"`
	Pattern int    `json:"pattern"` // 1-based index of the pattern (or ignore pattern); 0: none
}

type testDetector struct {
	Name    string                  `json:"name"`
	Counts  map[string]uint64       `json:"counts"` // outcome → lines
	Samples map[string][]testSample `json:"samples"`
}

type testResult struct {
	Input     string         `json:"input"`
	Lines     uint64         `json:"lines"`
	Cut       uint64         `json:"cut"`
	Detectors []testDetector `json:"detectors"`
}

func (a *App) sourceTestCmd() *cobra.Command {
	var asJSON bool
	var names []string
	var config string
	cmd := &cobra.Command{
		Use:   "test FILE|-",
		Short: "Run the detectors over a file or stdin, without the daemon: matched, missed, ignored",
		Long: `Run detectors over the lines of FILE (or stdin with -) and print, per
detector, how many lines it matched, ignored, missed and refused, with
sample lines of each; --json adds the fields each match extracted.
Nothing is sent to parryd. Each detector reads every line on its own.

Detectors: --detector NAME (repeatable), else those whose files: globs
match FILE, else all. The user's own detectors are read from --config
(sources.detectors; default ` + defaultConfigPath + ` if it exists).

  journalctl -u ssh -o cat | parry source test - --detector sshd
  parry source test /var/log/nginx/access.log --detector nginx-botsearch`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			set, err := testDetectors(config, cmd.Flags().Changed("config"))
			if err != nil {
				return &exitError{code: ExitFailed, err: err}
			}
			input := args[0]
			var ds []*detect.Detector
			switch {
			case len(names) > 0:
				for _, n := range names {
					d := set.Get(n)
					if d == nil {
						return usageErr("no detector %q", n)
					}
					ds = append(ds, d)
				}
			case input != "-":
				if abs, err := filepath.Abs(input); err == nil {
					ds = set.ForFile(abs).Detectors()
				}
			}
			if len(ds) == 0 {
				ds = set.Detectors()
			}
			var r io.Reader = a.Stdin
			if input != "-" {
				f, err := os.Open(input)
				if err != nil {
					return &exitError{code: ExitFailed, err: err}
				}
				defer f.Close()
				r = f
			}
			res, err := runTest(r, input, ds)
			if err != nil {
				return &exitError{code: ExitFailed, err: err}
			}
			if asJSON {
				return printResult(a.Stdout, true, res)
			}
			printTest(a.Stdout, res)
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON, with the fields each match extracted")
	cmd.Flags().StringSliceVar(&names, "detector", nil, "detector to run (repeatable; default: those for FILE, else all)")
	cmd.Flags().StringVar(&config, "config", defaultConfigPath, "parryd's config, for its sources.detectors")
	return cmd
}

// testDetectors is the built-in set with the config's own detectors. A
// missing default config is no error; a named one must exist.
func testDetectors(path string, named bool) (*detect.Set, error) {
	set, err := detect.Builtin()
	if err != nil {
		return nil, err
	}
	b, err := os.ReadFile(path)
	if err != nil {
		if !named && errors.Is(err, os.ErrNotExist) {
			return set, nil
		}
		return nil, fmt.Errorf("read config: %w", err)
	}
	var cfg struct {
		Sources struct {
			Detectors []detect.Spec `yaml:"detectors"`
		} `yaml:"sources"`
	}
	if err := yaml.NewDecoder(bytes.NewReader(b)).Decode(&cfg); err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	var own []*detect.Detector
	for _, s := range cfg.Sources.Detectors {
		d, err := detect.Compile(s)
		if err != nil {
			return nil, fmt.Errorf("%s: sources.detectors: %w", path, err)
		}
		own = append(own, d)
	}
	return set.With(own...), nil
}

// runTest reads lines (bounded at detect.MaxLine: a longer line is cut,
// counted, and never matches) and runs each detector over each.
func runTest(r io.Reader, input string, ds []*detect.Detector) (testResult, error) {
	res := testResult{Input: input}
	for _, d := range ds {
		res.Detectors = append(res.Detectors, testDetector{Name: d.Name(), Counts: map[string]uint64{}, Samples: map[string][]testSample{}})
	}
	br := bufio.NewReaderSize(r, 64<<10)
	for {
		text, cut, err := readLine(br, detect.MaxLine)
		if err != nil && text == "" {
			if errors.Is(err, io.EOF) {
				return res, nil
			}
			return res, fmt.Errorf("read %s: %w", input, err)
		}
		res.Lines++
		if cut {
			res.Cut++
		}
		l := detect.Line{Text: text, Cut: cut, Source: "test"}
		for i, d := range ds {
			m := d.Match(l)
			o := m.Outcome.String()
			td := &res.Detectors[i]
			td.Counts[o]++
			if len(td.Samples[o]) < sourceTestSamples && m.Outcome != detect.NotApplicable {
				s := testSample{Line: text, Pattern: m.Pattern + 1}
				if m.Outcome == detect.Matched {
					s.Kind, s.IP, s.User, s.Port = m.Signal.Kind, m.Signal.IP.String(), m.Signal.User, m.Signal.Attrs["port"]
				}
				td.Samples[o] = append(td.Samples[o], s)
			}
		}
		if err != nil {
			return res, nil
		}
	}
}

// readLine reads one line without its newline (and a \r before it), at
// most max bytes kept: the rest of a longer line is read and dropped.
func readLine(br *bufio.Reader, max int) (string, bool, error) {
	var buf []byte
	cut := false
	for {
		frag, err := br.ReadSlice('\n')
		if len(buf)+len(frag) > max+1 {
			keep := max - len(buf)
			if keep > 0 {
				buf = append(buf, frag[:min(keep, len(frag))]...)
			}
			cut = true
		} else {
			buf = append(buf, frag...)
		}
		if errors.Is(err, bufio.ErrBufferFull) {
			continue
		}
		s := strings.TrimSuffix(strings.TrimSuffix(string(buf), "\n"), "\r")
		if cut && len(s) > max {
			s = s[:max]
		}
		return s, cut, err
	}
}

func printTest(w io.Writer, res testResult) {
	fmt.Fprintf(w, "%d lines from %s", res.Lines, oneLine(res.Input))
	if res.Cut > 0 {
		fmt.Fprintf(w, " (%d longer than %d bytes, cut: never matched)", res.Cut, detect.MaxLine)
	}
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "DETECTOR\tMATCHED\tIGNORED\tMISSED\tREFUSED\tNOT APPLICABLE")
	for _, d := range res.Detectors {
		c := d.Counts
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%d\t%d\n", d.Name, c["matched"], c["ignored"], c["missed"], c["refused"], c["not_applicable"])
	}
	tw.Flush()
	for _, d := range res.Detectors {
		for _, o := range []string{"matched", "ignored", "refused", "missed"} {
			ss := d.Samples[o]
			if len(ss) == 0 {
				continue
			}
			fmt.Fprintf(w, "\n%s %s (first %d):\n", d.Name, o, len(ss))
			for _, s := range ss {
				fmt.Fprintf(w, "  %s\n", oneLine(s.Line))
				if s.Kind != "" {
					fmt.Fprintf(w, "    -> %s ip=%s", s.Kind, s.IP)
					if s.User != "" {
						fmt.Fprintf(w, " user=%q", s.User)
					}
					if s.Port != "" {
						fmt.Fprintf(w, " port=%s", s.Port)
					}
					fmt.Fprintln(w)
				}
			}
		}
	}
}
