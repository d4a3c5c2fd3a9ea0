// Command parry is the command line for parryd. See docs/cli.md.
package main

import (
	"context"
	"os"

	"github.com/parryhq/parry/agent/cli"
)

func main() {
	os.Exit(cli.Main(context.Background(), os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}
