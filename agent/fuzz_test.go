package agent

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/netip"
	"testing"
	"time"

	"github.com/parryhq/parry/agent/api"
	"github.com/parryhq/parry/agent/control"
	"github.com/parryhq/parry/agent/enforce"
)

func FuzzParseTarget(f *testing.F) {
	for _, s := range []string{"203.0.113.7", "198.51.100.0/24", "2001:db8::/48", "::ffff:1.2.3.4", "fe80::1%eth0", "", "1.2.3.4/", "0.0.0.0/0", "::/0", "1.2.3.4/33", "::ffff:0:0/95"} {
		f.Add(s)
	}
	g := &enforce.Guard{MinV4: 16, MinV6: 32, Own: []netip.Addr{netip.MustParseAddr("192.0.2.1")}}
	f.Fuzz(func(t *testing.T, s string) {
		p, err := api.ParseTarget(s)
		if err != nil {
			return
		}
		if !p.IsValid() || p != p.Masked() || p.Addr().Is4In6() || p.Addr().Zone() != "" {
			t.Fatalf("ParseTarget(%q) = %v: not canonical", s, p)
		}
		// A formatted target parses back to itself.
		if q, err := api.ParseTarget(api.FormatTarget(p)); err != nil || q != p {
			t.Fatalf("round trip %q -> %v -> %v %v", s, p, q, err)
		}
		if e := g.Check(p); e == nil && (p.Bits() == 0 || p.Addr().IsLoopback() || p.Contains(netip.MustParseAddr("192.0.2.1"))) {
			t.Fatalf("guard let %v through", p)
		}
	})
}

func FuzzRequest(f *testing.F) {
	for _, s := range []string{
		`{"op":"ping"}`, `{"op":"block","targets":["203.0.113.7"],"for":"1h","reason":"x"}`,
		`{"op":"block","targets":["198.51.100.0/24","2001:db8::/48"],"permanent":true,"partial":true}`,
		`{"op":"unblock","targets":["203.0.113.7"]}`, `{"op":"list"}`, `{"op":"status","id":7}`,
		`{"op":"lockdown","for":"10m","allow":["192.0.2.0/24"]}`, `{"op":"release"}`,
		`{"op":"block","targets":[1]}`, `{`, `null`, `"op"`, `{"op":"block","targets":["127.0.0.1"]}`,
		`{"op":"block","id":"x","targets":["203.0.113.7"],"for":"99999999999w"}`,
	} {
		f.Add([]byte(s))
	}
	cfg := DefaultConfig()
	cfg.StateDir = f.TempDir()
	cfg.Socket = cfg.StateDir + "/s.sock"
	if err := cfg.Validate(); err != nil {
		f.Fatal(err)
	}
	fw := newFakeFW()
	d, err := New(cfg, Options{Firewall: keepTable{fw}, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		HostAddrs: func() ([]netip.Addr, error) { return nil, nil }})
	if err != nil {
		f.Fatal(err)
	}
	defer d.Close()
	if err := d.heal.Reconcile("fuzz"); err != nil {
		f.Fatal(err)
	}
	peer := control.Peer{UID: 0, Admin: true, User: "root"}
	f.Fuzz(func(t *testing.T, line []byte) {
		_ = time.Now
		resp := d.server.HandleLine(context.Background(), peer, line)
		var w struct {
			OK    *bool      `json:"ok"`
			Error *api.Error `json:"error"`
		}
		if len(resp) == 0 || resp[len(resp)-1] != '\n' {
			t.Fatalf("response not one line: %q", resp)
		}
		if err := json.Unmarshal(resp, &w); err != nil || w.OK == nil {
			t.Fatalf("response not JSON with ok: %q", resp)
		}
		if !*w.OK && (w.Error == nil || w.Error.Code == "") {
			t.Fatalf("error without code: %q", resp)
		}
	})
}

// keepTable is a firewall whose table survives uninstall_rules, so that
// the next fuzz input finds it.
type keepTable struct{ *fakeFW }

func (keepTable) Remove() error { return nil }
