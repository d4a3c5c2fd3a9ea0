// Command parryd is parry's daemon. See docs/config.md and docs/protocol.md.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/parryhq/parry/agent"
	"github.com/parryhq/parry/agent/store"
)

func main() {
	m := &agent.Main{}
	if err := m.ParseFlags(os.Args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) || errors.Is(err, agent.ErrVersion) {
			os.Exit(0)
		}
		fmt.Fprintln(os.Stderr, "parryd:", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	go func() {
		for range hup {
			_ = m.Reload() // logged and audited; the old config stays on error
		}
	}()
	err := m.Run(ctx)
	if cerr := m.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "parryd:", err)
		if errors.Is(err, store.ErrCorrupt) {
			os.Exit(agent.ExitStoreCorrupt) // the unit does not restart on it
		}
		os.Exit(1)
	}
}
