package fleet

import (
	"github.com/parryhq/parry/agent/api"
	"github.com/prometheus/client_golang/prometheus"
)

// Status is the fleet's state for `parry status` and metrics. It is
// defined in agent/api, which the CLI reads it from.
type Status = api.FleetStatus

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

var (
	descConnected = prometheus.NewDesc("parry_fleet_connected", "1 when connected to a NATS server.", nil, nil)
	descCaughtUp  = prometheus.NewDesc("parry_fleet_caught_up", "1 once the fleet's active decisions have been read and applied.", nil, nil)
	descQueued    = prometheus.NewDesc("parry_fleet_queue_length", "Outgoing decision entries waiting for NATS.", nil, nil)
	descEntries   = prometheus.NewDesc("parry_fleet_entries_total", "Fleet decision entries (one per target) by outcome.", []string{"outcome"}, nil)
)

// Describe implements prometheus.Collector.
func (f *Fleet) Describe(ch chan<- *prometheus.Desc) {
	ch <- descConnected
	ch <- descCaughtUp
	ch <- descQueued
	ch <- descEntries
}

// Collect implements prometheus.Collector from Status: counters in memory,
// nothing else is read.
func (f *Fleet) Collect(ch chan<- prometheus.Metric) {
	st := f.Status()
	ch <- prometheus.MustNewConstMetric(descConnected, prometheus.GaugeValue, b2f(st.Connected))
	ch <- prometheus.MustNewConstMetric(descCaughtUp, prometheus.GaugeValue, b2f(st.CaughtUp))
	ch <- prometheus.MustNewConstMetric(descQueued, prometheus.GaugeValue, float64(st.Queued))
	for _, o := range []struct {
		name string
		v    uint64
	}{
		{"published", st.Published}, {"dropped", st.Dropped}, {"received", st.Received},
		{"applied", st.Applied}, {"refused", st.Refused}, {"rejected", st.Rejected},
		{"echo", st.Echoes}, {"duplicate", st.Duplicates}, {"expired", st.Expired},
	} {
		ch <- prometheus.MustNewConstMetric(descEntries, prometheus.CounterValue, float64(o.v), o.name)
	}
}

var _ prometheus.Collector = (*Fleet)(nil)

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
