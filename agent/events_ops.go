package agent

import (
	"context"
	"time"

	"github.com/parryhq/parry/agent/api"
	"github.com/parryhq/parry/agent/control"
	"github.com/parryhq/parry/agent/events"
)

// eventsParams are the parameters of op events (docs/protocol.md).
type eventsParams struct {
	Kinds []string `json:"kinds"` // api.EventKinds; none: every kind
	// Since replays the audit log's events from then before the live
	// ones: a duration back from now ("1h", "30m") or an RFC 3339 time.
	Since string `json:"since"`
}

// opEvents subscribes the peer to the event stream (agent/events): the
// answer line, then one line per event until the client closes the
// connection or stops reading. Admins only: events carry user names and
// addresses.
func (d *Daemon) opEvents(_ context.Context, c *control.Call) (any, error) {
	var p eventsParams
	if err := c.Decode(&p); err != nil {
		return nil, err
	}
	kinds, err := api.ParseKinds(p.Kinds)
	if err != nil {
		return nil, err
	}
	var since time.Time
	if p.Since != "" {
		if t, err := time.Parse(time.RFC3339Nano, p.Since); err == nil {
			since = t
		} else if dur, err := api.ParseDuration(p.Since); err == nil && dur > 0 {
			since = d.now().Add(-dur)
		} else {
			return nil, api.Errorf(api.CodeBadRequest, "events since: %q is neither a duration (1h, 30m) nor an RFC 3339 time", truncate(p.Since, 64))
		}
	}
	return d.events.Open(events.Options{Kinds: kinds, Since: since, AuditPath: d.auditPath, Log: d.log}), nil
}
