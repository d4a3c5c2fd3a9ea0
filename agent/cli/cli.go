// Package cli is the parry command line: cobra commands over the control
// socket (agent/client). cmd/parry only calls Main.
package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/parryhq/parry/agent/api"
	"io"
	"os"

	"github.com/parryhq/parry/agent/client"
	"github.com/spf13/cobra"
)

// Exit codes.
const (
	ExitOK     = 0
	ExitFailed = 1 // refused or failed
	ExitUsage  = 2 // bad command line
)

// exitError carries an exit code; its message is already printed if quiet.
type exitError struct {
	code    int
	err     error
	quiet   bool
	apiCode string // the daemon's error code, when the daemon refused
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

// UsageError is a mistake on the command line: an unknown command or
// flag, a wrong number of arguments, a bad value. Main prints it with the
// usage hint and exits 2.
type UsageError struct {
	Err error
}

func (e *UsageError) Error() string { return e.Err.Error() }
func (e *UsageError) Unwrap() error { return e.Err }

func usageErr(format string, args ...any) error {
	return &UsageError{Err: fmt.Errorf(format, args...)}
}

// usageArgs makes an argument validator's errors usage errors.
func usageArgs(v cobra.PositionalArgs) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if err := v(cmd, args); err != nil {
			return &UsageError{Err: err}
		}
		return nil
	}
}

// walk calls fn for c and every command below it.
func walk(c *cobra.Command, fn func(*cobra.Command)) {
	fn(c)
	for _, sub := range c.Commands() {
		walk(sub, fn)
	}
}

// unknownSubcommand finds the command args name. For a group (a command
// that only holds subcommands) followed by a word that is none of them,
// cobra would print the group's help and succeed; it is a usage error.
// So is an unknown command at the top (cobra's Find reports only that).
func unknownSubcommand(root *cobra.Command, args []string) error {
	if len(args) > 0 && (args[0] == cobra.ShellCompRequestCmd || args[0] == cobra.ShellCompNoDescRequestCmd) {
		return nil // shell completion asks with commands cobra adds later
	}
	c, rest, err := root.Find(args)
	if err != nil {
		return &UsageError{Err: err}
	}
	if c.Runnable() || !c.HasSubCommands() {
		return nil
	}
	if c.ParseFlags(rest) != nil {
		return nil // --help, or a bad flag: Execute deals with it
	}
	if words := c.Flags().Args(); len(words) > 0 {
		return &UsageError{Err: fmt.Errorf("unknown command %q for %q", words[0], c.CommandPath())}
	}
	return nil
}

// App is one invocation of the CLI.
type App struct {
	Stdin          io.Reader
	Stdout, Stderr io.Writer
	Getenv         func(string) string
	socket         string
	raw            io.Writer // stdout unfiltered (events.go), nil: none
}

// Main runs the CLI and returns the process exit code.
func Main(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	out := &countingWriter{w: termSafe{stdout}}
	raw := &countingWriter{w: stdout}
	stdout, stderr = out, termSafe{stderr}
	a := &App{Stdin: stdin, Stdout: stdout, Stderr: stderr, Getenv: os.Getenv, raw: raw}
	root := a.command(args)
	root.SetArgs(args)
	root.SetIn(stdin)
	root.SetOut(stdout)
	root.SetErr(stderr)
	err := unknownSubcommand(root, args)
	if err == nil {
		err = root.ExecuteContext(ctx)
	}
	if err == nil {
		return ExitOK
	}
	if out.n == 0 && raw.n == 0 && wantsJSON(root, args) {
		// --json promised an object on stdout: say what failed in one.
		printFailure(stdout, err)
	}
	var ue *UsageError
	if errors.As(err, &ue) {
		fmt.Fprintln(stderr, "parry:", ue.Err)
		fmt.Fprintln(stderr, "Run 'parry --help' for usage.")
		return ExitUsage
	}
	var ee *exitError
	if errors.As(err, &ee) {
		if !ee.quiet {
			fmt.Fprintln(stderr, "parry:", ee.err)
		}
		return ee.code
	}
	fmt.Fprintln(stderr, "parry:", err)
	return ExitFailed
}

// command is the whole command tree, with cobra's help and completion
// commands, every argument validator returning usage errors.
func (a *App) command(args []string) *cobra.Command {
	root := a.rootCmd()
	root.InitDefaultHelpCmd()
	root.InitDefaultCompletionCmd(args...)
	walk(root, func(c *cobra.Command) {
		if c.Args != nil {
			c.Args = usageArgs(c.Args)
		}
	})
	return root
}

func (a *App) rootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:   "parry",
		Short: "Block IPs and CIDRs on this host through parryd",
		Long: `parry drives parryd, the host-level threat response daemon.

Blocks go into parryd's own nftables table (inet parry) with kernel-side
expiry: a block ends on time even if the daemon is down. Every action is
stored durably and recorded in a hash-chained audit log.

Examples:
  parry block 203.0.113.7 --for 1h --reason "ssh brute force"
  parry block 198.51.100.0/24 2001:db8::/48 --for 30m
  parry block --file bad-ips.txt --for 1d     # one target per line, '-' for stdin
  parry list
  parry unblock 203.0.113.7
  parry status
  parry audit verify
  parry signal auth_failure --ip 203.0.113.7 --user alice --source webapp
  parry lockdown --for 15m --allow 10.0.0.0/24 --reason "incident 42"
  parry release

Exit status: 0 ok, 1 refused or failed, 2 usage error.
The socket is --socket, else $PARRY_SOCKET, else ` + client.DefaultSocket + `.`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.PersistentFlags().StringVar(&a.socket, "socket", "", "control socket (default $PARRY_SOCKET or "+client.DefaultSocket+")")
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageErr("%v", err) })
	root.AddCommand(a.blockCmd(), a.unblockCmd(), a.listCmd(), a.statusCmd(), a.auditCmd(),
		a.lockdownCmd(), a.releaseCmd(), a.signalCmd(), a.uninstallCmd(), a.integrityCmd(), a.eventsCmd(),
		a.feedCmd(), a.whyCmd(), a.sourceCmd())
	root.AddCommand(a.incidentCmds()...)
	return root
}

func (a *App) socketPath() string {
	if a.socket != "" {
		return a.socket
	}
	if s := a.Getenv("PARRY_SOCKET"); s != "" {
		return s
	}
	return client.DefaultSocket
}

func (a *App) dial() (*client.Client, error) {
	c, err := client.Dial(a.socketPath())
	if err != nil {
		return nil, &exitError{code: ExitFailed, err: err}
	}
	return c, nil
}

// call runs one request and decodes the response into out.
func (a *App) call(req map[string]any, out any) error {
	c, err := a.dial()
	if err != nil {
		return err
	}
	defer c.Close()
	if err := c.Call(req, out); err != nil {
		var pe *api.Error
		if errors.As(err, &pe) {
			return &exitError{code: ExitFailed, err: fmt.Errorf("%s (%s)", pe.Message, pe.Code), apiCode: string(pe.Code)}
		}
		return &exitError{code: ExitFailed, err: err}
	}
	return nil
}

// countingWriter counts what reached stdout.
type countingWriter struct {
	w io.Writer
	n int
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += n
	return n, err
}

// wantsJSON reports whether the command that ran was asked for JSON
// (--json, or report's --format json). Flags are parsed by then.
func wantsJSON(root *cobra.Command, args []string) bool {
	c, _, err := root.Find(args)
	if err != nil {
		return false
	}
	if f := c.Flags().Lookup("json"); f != nil && f.Changed && f.Value.String() == "true" {
		return true
	}
	f := c.Flags().Lookup("format")
	return f != nil && f.Changed && f.Value.String() == "json"
}

// jsonFailure is what a --json command prints when it fails before it
// has an answer to print (parryd unreachable, a refusal, a usage error).
type jsonFailure struct {
	OK    bool `json:"ok"`
	Error struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
}

func printFailure(w io.Writer, err error) {
	var f jsonFailure
	f.Error.Code, f.Error.Message = "failed", err.Error()
	var ue *UsageError
	var ee *exitError
	switch {
	case errors.As(err, &ue):
		f.Error.Code, f.Error.Message = "usage", ue.Err.Error()
	case errors.As(err, &ee) && ee.apiCode != "":
		f.Error.Code = ee.apiCode
	}
	_ = printJSON(w, f)
}

// printResult prints v, which must encode as a JSON object, with "ok"
// (true when the command exits 0) as its first member: every --json
// output has the same shape, {"ok": ..., the answer's members}. An answer
// with an "ok" of its own (audit verify's) keeps it; it says the same.
func printResult(w io.Writer, ok bool, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("encode json: %w", err)
	}
	var members map[string]json.RawMessage
	if err := json.Unmarshal(b, &members); err != nil {
		return fmt.Errorf("encode json: not an object: %w", err)
	}
	if _, has := members["ok"]; !has {
		head := `{"ok":false`
		if ok {
			head = `{"ok":true`
		}
		if len(members) > 0 {
			head += ","
		}
		b = append([]byte(head), b[1:]...)
	}
	var out bytes.Buffer
	if err := json.Indent(&out, b, "", "  "); err != nil {
		return fmt.Errorf("encode json: %w", err)
	}
	out.WriteByte('\n')
	_, err = w.Write(out.Bytes())
	return err
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
