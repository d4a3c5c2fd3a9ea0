package cli

import (
	"fmt"
	"github.com/parryhq/parry/agent/api"
	"io"
	"time"
)

// printFleet adds the fleet's lines to `parry status`.
func printFleet(w io.Writer, st *api.FleetStatus) {
	if st == nil {
		fmt.Fprintln(w, "fleet: off")
		return
	}
	conn := "DISCONNECTED (local enforcement goes on; outgoing decisions queue)"
	if st.Connected {
		conn = "connected to " + st.Server
	}
	catch := "caught up"
	if !st.CaughtUp {
		catch = "catching up"
	}
	fmt.Fprintf(w, "fleet: %s as %q, %s\n", conn, st.Name, catch)
	fmt.Fprintf(w, "fleet queue: %d/%d waiting, %d dropped\n", st.Queued, st.QueueSize, st.Dropped)
	fmt.Fprintf(w, "fleet decisions: %d published, %d applied, %d refused here, %d rejected (bad or forged)\n",
		st.Published, st.Applied, st.Refused, st.Rejected)
	if st.LastError != "" {
		fmt.Fprintf(w, "fleet last error: %s (%s)\n", st.LastError, st.LastErrorAt.Local().Format(time.RFC3339))
	}
}
