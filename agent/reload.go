package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"reflect"
	"slices"
	"time"

	"github.com/parryhq/parry/agent/api"
	"github.com/parryhq/parry/agent/evidence"
	"github.com/parryhq/parry/agent/metrics"
	"github.com/parryhq/parry/integrity"
)

// reloadParts hands the reloaded integrity, evidence, notify, metrics and
// check sections to the parts that own them (ApplyConfig, after the
// policy and the decision path took theirs). A key that needs a restart,
// or a section a part could not take now, keeps its old value in cfg, so
// that the config in force says what is in force and the next reload
// tries again.
func (d *Daemon) reloadParts(old Config, cfg *Config) api.ReloadResult {
	var res api.ReloadResult
	restart, err := d.integ.reconfigure(old.Integrity, cfg.Integrity)
	switch {
	case err != nil:
		res.NotApplied = append(res.NotApplied, "integrity: "+err.Error())
		cfg.Integrity = old.Integrity
	default:
		res.NeedsRestart = append(res.NeedsRestart, restart...)
		if slices.Contains(restart, "integrity.hash") {
			cfg.Integrity.Hash = old.Integrity.Hash
		}
		if slices.Contains(restart, "integrity.enabled") {
			cfg.Integrity.Enabled = old.Integrity.Enabled
		}
	}
	if in := d.incident.Load(); in != nil {
		r := in.reconfigure(old, cfg)
		res.NeedsRestart = append(res.NeedsRestart, r.NeedsRestart...)
		res.NotApplied = append(res.NotApplied, r.NotApplied...)
	}
	return res
}

// reconfigure gives the running monitor the reloaded integrity section
// (integrity.Monitor.Reconfigure: in place, watches and pending events
// kept), waiting for it at most integrityWait. Before the monitor exists
// there is nothing to change: it is built from the config in force.
func (g *integrityGlue) reconfigure(old, cfg integrity.Config) ([]string, error) {
	if reflect.DeepEqual(old, cfg) {
		return nil, nil // unchanged: no check of the selection for nothing
	}
	g.mu.Lock()
	mon := g.mon
	g.mu.Unlock()
	if mon == nil {
		was, now := old.WithDefaults().Enabled, cfg.WithDefaults().Enabled
		if *was != *now {
			return []string{"integrity.enabled"}, nil
		}
		return nil, nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), integrityWait)
	defer cancel()
	restart, err := mon.Reconfigure(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("not applied: %w", err)
	}
	return restart, nil
}

// config is the configuration of the incident tooling in force.
func (in *Incident) config() Config {
	in.cfgMu.Lock()
	defer in.cfgMu.Unlock()
	return in.cfg
}

// reconfigure applies the reloaded evidence, notify, check and metrics
// sections: evidence captures started from now on use the new collector;
// the notifier is updated in place (a webhook keeps its queue, and sends
// it to its new URL); the host check reads its section when it runs; the
// metrics endpoint moves to a new address or path (metrics.enabled needs
// a restart). Queued jobs and lookups are not touched.
func (in *Incident) reconfigure(old Config, cfg *Config) api.ReloadResult {
	var res api.ReloadResult
	if !reflect.DeepEqual(old.Notify, cfg.Notify) {
		if err := in.notifier.Update(cfg.Notify); err != nil {
			res.NotApplied = append(res.NotApplied, "notify: "+err.Error())
			cfg.Notify = old.Notify
		}
	}
	if !reflect.DeepEqual(old.Evidence, cfg.Evidence) {
		in.collector.Store(evidence.NewCollector(cfg.Evidence, in.d.now))
	}
	if cfg.Metrics.Enabled != old.Metrics.Enabled {
		res.NeedsRestart = append(res.NeedsRestart, "metrics.enabled")
		cfg.Metrics.Enabled = old.Metrics.Enabled
	}
	was, now := old.Metrics.WithDefaults(), cfg.Metrics.WithDefaults()
	if in.metrics != nil && (was.Listen != now.Listen || was.Path != now.Path) {
		if err := in.moveMetrics(now); err != nil {
			res.NotApplied = append(res.NotApplied, "metrics: "+err.Error())
			cfg.Metrics = old.Metrics
		}
	}
	in.cfgMu.Lock()
	in.cfg = *cfg
	in.cfgMu.Unlock()
	return res
}

// metricsRebind asks serveMetrics to serve cfg; it answers on reply.
type metricsRebind struct {
	cfg   metrics.Config
	reply chan error
}

// metricsMoveWait bounds how long a reload waits for the metrics endpoint
// to move (stopping the old server waits up to 2 s for its scrapes).
const metricsMoveWait = 5 * time.Second

var errMetricsNotServing = errors.New("metrics endpoint not running")

// moveMetrics has serveMetrics listen on cfg's address and path.
func (in *Incident) moveMetrics(cfg metrics.Config) error {
	req := metricsRebind{cfg: cfg, reply: make(chan error, 1)}
	t := time.NewTimer(metricsMoveWait)
	defer t.Stop()
	select {
	case in.rebind <- req:
	case <-t.C:
		return errMetricsNotServing
	}
	select {
	case err := <-req.reply:
		return err
	case <-t.C:
		return errors.New("metrics endpoint did not answer within 5s")
	}
}

// serveMetrics serves the metrics until ctx ends, moving to a new address
// or path when a reload asks: a new address is bound before the old one is
// closed (no gap, and a failure keeps the old one); the same address with
// a new path is closed and bound again.
func (in *Incident) serveMetrics(ctx context.Context) {
	mc := in.config().Metrics.WithDefaults()
	ln, err := metrics.Listen(mc)
	if err != nil {
		in.log.Error("metrics endpoint not started; enforcement continues", "err", err)
	} else {
		in.log.Info("metrics endpoint", "listen", ln.Addr().String(), "path", mc.Path)
	}
	for {
		sctx, stop := context.WithCancel(ctx)
		served := make(chan struct{})
		if ln != nil {
			go func(ln net.Listener, path string) {
				defer close(served)
				if err := in.metrics.Serve(sctx, ln, path); err != nil {
					in.log.Error("metrics endpoint stopped", "err", err)
				}
			}(ln, mc.Path)
		} else {
			close(served)
		}
		moved := false
		for !moved {
			select {
			case <-ctx.Done():
				stop()
				<-served
				return
			case req := <-in.rebind:
				nln, err := metrics.Listen(req.cfg)
				if err != nil && (ln == nil || req.cfg.Listen != mc.Listen) {
					req.reply <- err // the old endpoint goes on
					continue
				}
				stop()
				<-served
				if err != nil { // the same address: bound again once freed
					if nln, err = metrics.Listen(req.cfg); err != nil {
						nln, req.cfg = nil, mc
						if ln2, err2 := metrics.Listen(mc); err2 == nil {
							nln = ln2 // the old one back
						}
					}
				}
				ln, mc, moved = nln, req.cfg, true
				if ln != nil {
					in.log.Info("metrics endpoint", "listen", ln.Addr().String(), "path", mc.Path)
				}
				req.reply <- err
			}
		}
		stop()
	}
}
