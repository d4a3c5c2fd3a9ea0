package agent

import (
	"fmt"
	"net/netip"
	"time"

	"github.com/parryhq/parry/agent/api"
)

// parseTargets parses request targets. Without partial, the first bad one
// refuses the request; with it, bad ones are returned as refusals.
func parseTargets(in []string, partial bool) ([]netip.Prefix, []*api.Error, error) {
	if len(in) == 0 {
		return nil, nil, api.Errorf(api.CodeBadRequest, `"targets" is empty: give at least one IP or CIDR`)
	}
	out := make([]netip.Prefix, 0, len(in))
	var bad []*api.Error
	for i, s := range in {
		p, err := api.ParseTarget(s)
		if err != nil {
			e := &api.Error{Code: api.CodeInvalidTarget, Message: fmt.Sprintf("targets[%d]: %v", i, err), Target: truncate(s, 64)}
			if !partial {
				return nil, nil, e
			}
			bad = append(bad, e)
			continue
		}
		out = append(out, p)
	}
	return out, bad, nil
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}

// blockParams are the parameters of op "block".
type blockParams struct {
	Targets   []string `json:"targets"`
	For       string   `json:"for"`       // duration; default config default_block
	Permanent bool     `json:"permanent"` // no expiry; excludes "for"
	Reason    string   `json:"reason"`
	Source    string   `json:"source"`  // who asks, free-form; default "control"
	Partial   bool     `json:"partial"` // apply the acceptable targets, report the rest
	Country   string   `json:"country"` // instead of targets: the prefixes of this country (geoip:)
	ASN       string   `json:"asn"`     // instead of targets: the prefixes of this AS (geoip:)
}

// until resolves the block's end time (zero: permanent).
func (p *blockParams) until(now time.Time, cfg *Config) (time.Time, error) {
	switch {
	case p.Permanent && p.For != "":
		return time.Time{}, api.Errorf(api.CodeBadRequest, `give either "for" or "permanent", not both`)
	case p.Permanent:
		return time.Time{}, nil
	case p.For == "":
		return now.Add(cfg.DefaultBlock.D()), nil
	}
	d, err := api.ParseDuration(p.For)
	if err != nil {
		return time.Time{}, api.Errorf(api.CodeInvalidDuration, "%v", err)
	}
	if d < time.Second {
		return time.Time{}, api.Errorf(api.CodeInvalidDuration, `"for" must be at least 1s`)
	}
	if cfg.MaxBlock.D() > 0 && d > cfg.MaxBlock.D() {
		return time.Time{}, api.Errorf(api.CodeInvalidDuration, "%s is longer than max_block %s", api.FormatDuration(d), api.FormatDuration(cfg.MaxBlock.D()))
	}
	if d > 100*365*24*time.Hour {
		return time.Time{}, api.Errorf(api.CodeInvalidDuration, "%s is too long; use permanent", api.FormatDuration(d))
	}
	return now.Add(d), nil
}
