package fleet

import "time"

// Status is the fleet's state for `parry status` and metrics.
type Status struct {
	Name        string    `json:"name"`
	Connected   bool      `json:"connected"`
	Server      string    `json:"server,omitempty"` // the server connected to (credentials redacted)
	CaughtUp    bool      `json:"caught_up"`
	Queued      int       `json:"queued"` // outgoing entries waiting for NATS
	QueueSize   int       `json:"queue_size"`
	Dropped     uint64    `json:"dropped"`    // outgoing entries dropped because the queue was full
	Published   uint64    `json:"published"`  // entries stored in the stream
	Received    uint64    `json:"received"`   // messages read from the stream
	Applied     uint64    `json:"applied"`    // remote decisions enforced here
	Refused     uint64    `json:"refused"`    // remote decisions the agent refused (guard) or failed
	Rejected    uint64    `json:"rejected"`   // malformed, unsigned or forged messages
	Echoes      uint64    `json:"echoes"`     // our own decisions coming back
	Duplicates  uint64    `json:"duplicates"` // remote decisions already applied
	Expired     uint64    `json:"expired"`    // remote blocks that had expired on arrival
	LastError   string    `json:"last_error,omitempty"`
	LastErrorAt time.Time `json:"last_error_at,omitzero"`
}

// Status returns a snapshot of the fleet's state.
func (f *Fleet) Status() Status {
	st := Status{
		Name: f.cfg.Name, QueueSize: f.cfg.QueueSize,
		Published: f.published.Load(), Received: f.received.Load(), Applied: f.applied.Load(),
		Refused: f.refused.Load(), Rejected: f.rejected.Load(), Echoes: f.echoes.Load(),
		Duplicates: f.duplicates.Load(), Expired: f.expired.Load(),
	}
	st.Queued, st.Dropped = f.q.len()
	if f.nc != nil && f.nc.IsConnected() {
		st.Connected, st.Server = true, f.nc.ConnectedUrlRedacted()
	}
	select {
	case <-f.caughtUp:
		st.CaughtUp = true
	default:
	}
	f.mu.Lock()
	st.LastError, st.LastErrorAt = f.lastErr, f.lastAt
	f.mu.Unlock()
	return st
}
