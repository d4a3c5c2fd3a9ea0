package agent

import (
	"context"

	"github.com/parryhq/parry/agent/api"
	"github.com/parryhq/parry/agent/control"
	"github.com/parryhq/parry/agent/enforce"
)

// listParams are op list's optional filters (docs/protocol.md).
type listParams struct {
	Contains string `json:"contains"` // an address: the blocks that cover it
	Source   string `json:"source"`
	Origin   string `json:"origin"` // "local" for this host's own
	Reason   string `json:"reason"` // substring, case-insensitive
	Since    string `json:"since"`  // duration: created within the last D
	Expiring string `json:"expiring"`
}

// listQuery decodes op list's filters.
func (d *Daemon) listQuery(c *control.Call) (enforce.Query, error) {
	var p listParams
	if err := c.Decode(&p); err != nil {
		return enforce.Query{}, err
	}
	q := enforce.Query{Source: truncate(p.Source, 64), Origin: truncate(p.Origin, 256), Reason: truncate(p.Reason, 1024)}
	if p.Contains != "" {
		t, err := api.ParseTarget(p.Contains)
		if err != nil || !t.IsSingleIP() {
			return q, api.Errorf(api.CodeInvalidTarget, `list: "contains" must be one address`)
		}
		q.Contains = t.Addr()
	}
	for _, f := range []struct {
		name, s string
		set     func(dur api.Duration)
	}{
		{"since", p.Since, func(v api.Duration) { q.Since = d.now().Add(-v.D()) }},
		{"expiring", p.Expiring, func(v api.Duration) { q.Expiring = v.D() }},
	} {
		if f.s == "" {
			continue
		}
		v, err := api.ParseDuration(f.s)
		if err != nil || v <= 0 {
			return q, api.Errorf(api.CodeInvalidDuration, "list: %q must be a positive duration like 1h", f.name)
		}
		f.set(api.Duration(v))
	}
	return q, nil
}

// opWhy answers `parry why ADDR`: the blocks covering it, their decisions
// and causes, with the country and AS when the databases know them.
func (d *Daemon) opWhy(ctx context.Context, c *control.Call) (any, error) {
	var p struct {
		Addr string `json:"addr"`
	}
	if err := c.Decode(&p); err != nil {
		return nil, err
	}
	t, err := api.ParseTarget(p.Addr)
	if err != nil || !t.IsSingleIP() {
		return nil, api.Errorf(api.CodeInvalidTarget, `why: "addr" must be one address`)
	}
	w, err := d.path.Why(ctx, t.Addr())
	if err != nil {
		return nil, err
	}
	bs := make([]api.BlockInfo, len(w.Blocks))
	for i := range w.Blocks {
		bs[i] = w.Blocks[i].BlockInfo
	}
	d.geo.annotate(bs)
	for i := range w.Blocks {
		w.Blocks[i].BlockInfo = bs[i]
	}
	return w, nil
}
