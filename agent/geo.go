package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sync/atomic"

	"github.com/parryhq/parry/agent/api"
	"github.com/parryhq/parry/agent/control"
	"github.com/parryhq/parry/agent/enforce"
	"github.com/parryhq/parry/agent/geoip"
	"github.com/parryhq/parry/agent/report"
	"github.com/parryhq/parry/response"
)

// The country and ASN databases (docs/feeds.md, "Country and ASN"): the
// admin's .mmdb files, opened at start and on reload (an immutable
// geoip.DB swapped atomically), used to expand `parry block --country` and
// `--asn` into prefixes and to show where a block's address is in list.

// geoGlue holds the databases in force.
type geoGlue struct {
	db  atomic.Pointer[geoip.DB]
	log *slog.Logger
}

// open (re)opens the databases of c. A file that cannot be read is logged
// and leaves that lookup off (country and ASN blocks then fail with a clear
// error): a database not yet downloaded must not stop the daemon.
func (g *geoGlue) open(c geoip.Config) {
	db, err := geoip.Open(c)
	if err != nil {
		g.log.Error("geoip databases not opened; country and ASN blocks and lookups are off until a reload", "err", err)
		g.db.Store(nil)
		return
	}
	g.db.Store(db)
}

// expand returns the prefixes of a country or an AS, each split into
// pieces no broader than the guard's minimum prefixes (a country's /8
// becomes 256 /16s: the guard's bound holds, the coverage is the same),
// and the reason text.
func (g *geoGlue) expand(ctx context.Context, country, asn string, minV4, minV6 int) ([]netip.Prefix, string, error) {
	db := g.db.Load()
	var ps []netip.Prefix
	var what string
	var err error
	switch {
	case country != "" && asn != "":
		return nil, "", api.Errorf(api.CodeBadRequest, `give either "country" or "asn", not both`)
	case country != "":
		code, perr := geoip.ParseCountry(country)
		if perr != nil {
			return nil, "", api.Errorf(api.CodeInvalidTarget, "%v", perr)
		}
		what = "country " + code
		ps, err = db.Country(ctx, code)
	default:
		n, perr := geoip.ParseASN(asn)
		if perr != nil {
			return nil, "", api.Errorf(api.CodeInvalidTarget, "%v", perr)
		}
		what = fmt.Sprintf("AS%d", n)
		ps, err = db.ASN(ctx, n)
	}
	switch {
	case errors.Is(err, geoip.ErrNoDB):
		return nil, "", api.Errorf(api.CodeBadRequest, "%s: no database for it (geoip: in parry.yaml, docs/feeds.md)", what)
	case errors.Is(err, geoip.ErrNotFound):
		return nil, "", api.Errorf(api.CodeInvalidTarget, "%s: not in the database", what)
	case err != nil:
		return nil, "", api.Errorf(api.CodeInternal, "%s: %v", what, err)
	}
	out := make([]netip.Prefix, 0, len(ps))
	for _, p := range ps {
		out = appendSplit(out, p, minV4, minV6)
	}
	return out, what, nil
}

// appendSplit appends p, or p cut into pieces of the minimum prefix when
// it is broader.
func appendSplit(out []netip.Prefix, p netip.Prefix, minV4, minV6 int) []netip.Prefix {
	min := minV4
	if p.Addr().Is6() {
		min = minV6
	}
	if p.Bits() >= min || p.Bits() == 0 || min-p.Bits() > 16 {
		return append(out, p) // fine, or the guard refuses it (too_broad)
	}
	a := p.Addr()
	for range 1 << (min - p.Bits()) {
		out = append(out, netip.PrefixFrom(a, min))
		a = enforce.NextPrefixAddr(a, min)
	}
	return out
}

// annotate fills in the country and AS of each block's address.
func (g *geoGlue) annotate(bs []api.BlockInfo) {
	db := g.db.Load()
	if !db.HasCountry() && !db.HasASN() {
		return
	}
	for i := range bs {
		p, err := api.ParseTarget(bs[i].Target)
		if err != nil {
			continue
		}
		info := db.Lookup(p.Addr())
		bs[i].Country, bs[i].ASN, bs[i].ASOrg = info.Country, info.ASN, info.ASOrg
	}
}

// blockGeo is op block with "country" or "asn": the prefixes the
// databases give, blocked as one decision in partial mode (what the guard
// protects — the allowlist, own addresses, an overlapping CIDR block — is
// refused and reported, the rest blocked), in one kernel transaction.
func (d *Daemon) blockGeo(ctx context.Context, c *control.Call, p blockParams, cfg *Config) (any, error) {
	if len(p.Targets) > 0 {
		return nil, api.Errorf(api.CodeBadRequest, `give "targets" or "country"/"asn", not both`)
	}
	until, err := p.until(d.now(), cfg)
	if err != nil {
		return nil, err
	}
	targets, what, err := d.geo.expand(ctx, p.Country, p.ASN, cfg.MinPrefixV4, cfg.MinPrefixV6)
	if err != nil {
		return nil, err
	}
	if p.Source == "" {
		p.Source = "control"
	}
	reason := what
	if p.Reason != "" {
		reason = what + ": " + p.Reason
	}
	dec := response.Decision{Action: response.ActionBlock, Targets: targets, Until: until,
		Reason: truncate(reason, 1024), Source: truncate(p.Source, 64), Sender: c.Peer.String(), Admin: true}
	return d.path.EnforceWith(ctx, dec, enforce.EnforceOptions{Partial: true})
}

// annotateSources fills in the country and AS of the report's sources
// that the audit log did not carry (signals may name them; blocks do not).
func (g *geoGlue) annotateSources(srcs []report.Source) {
	db := g.db.Load()
	if !db.HasCountry() && !db.HasASN() {
		return
	}
	for i := range srcs {
		p, err := api.ParseTarget(srcs[i].Addr)
		if err != nil {
			continue
		}
		info := db.Lookup(p.Addr())
		if srcs[i].Country == "" {
			srcs[i].Country = info.Country
		}
		if srcs[i].ASN == "" && info.ASN != 0 {
			srcs[i].ASN = fmt.Sprintf("AS%d", info.ASN)
		}
	}
}
