package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/parryhq/parry/agent/api"
	"github.com/parryhq/parry/integrity"
)

func TestIntegrityConfigStrict(t *testing.T) {
	for doc, want := range map[string]string{
		"integrity:\n  hash: md5\n":                                     "integrity.hash",
		"integrity:\n  bogus: 1\n":                                      "bogus",
		"integrity:\n  paths:\n    - path: etc\n":                       "absolute",
		"integrity:\n  rules:\n    - path: /x\n      mode_max: \"9\"\n": "mode_max",
		"integrity:\n  max_hash_size: huge\n":                           "integrity.max_hash_size",
		"integrity:\n  burst_interval: 1ms\n":                           "integrity.burst_interval",
		"integrity:\n  max_open_findings: -1\n":                         "integrity.max_open_findings",
	} {
		p := filepath.Join(t.TempDir(), "parry.yaml")
		if err := os.WriteFile(p, []byte(doc), 0o600); err != nil {
			t.Fatal(err)
		}
		_, err := LoadConfig(p, false)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: got %v, want an error about %s", doc, err, want)
		}
	}
	p := filepath.Join(t.TempDir(), "parry.yaml")
	ok := "integrity:\n  paths:\n    - path: /etc\n      exclude: [\"*.swp\"]\n  rules:\n    - path: /etc/shadow\n      mode_max: \"0640\"\n      owner: root\n  scan_interval: 30m\n  io_rate: 50MiB\n" +
		"  max_hash_size: 512MiB\n  burst_threshold: 20\n  burst_interval: 30s\n  max_open_findings: 500\n"
	if err := os.WriteFile(p, []byte(ok), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadConfig(p, false); err != nil {
		t.Fatalf("valid integrity config refused: %v", err)
	}
}

// TestIntegrityBusyCode: a monitor that could not be had in time answers
// with the protocol code busy, not bad_request.
func TestIntegrityBusyCode(t *testing.T) {
	err := integrityErr(fmt.Errorf("status: %w (check running for 9s)", integrity.ErrBusy))
	if api.CodeOf(err) != api.CodeBusy {
		t.Fatalf("code %q, want %q", api.CodeOf(err), api.CodeBusy)
	}
}

// TestStuckIntegrityMonitorAnswersBusy: with the integrity monitor held
// (a check stuck in its report callback, as a hung watcher holds it), op
// integrity_status answers busy and an evidence capture still completes,
// without the open findings and saying why, both within a bounded time.
func TestStuckIntegrityMonitorAnswersBusy(t *testing.T) {
	d, in := incidentDaemon(t, nil)
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "f"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	hold, held := make(chan struct{}), make(chan struct{})
	var once sync.Once
	mon, err := integrity.NewMonitor(integrity.Config{Paths: []integrity.PathSpec{{Path: dir}}, Rules: []integrity.Rule{}, PackageManager: "none"},
		integrity.Options{StateDir: t.TempDir(), LockWait: integrityWait, Report: func(integrity.Finding) {
			once.Do(func() { close(held); <-hold })
		}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := mon.Baseline(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "g"), []byte("y"), 0o644); err != nil {
		t.Fatal(err)
	}
	checked := make(chan error, 1)
	go func() { _, err := mon.Check(context.Background()); checked <- err }()
	<-held
	defer func() { close(hold); <-checked }()
	d.integ.mu.Lock()
	d.integ.mon = mon
	d.integ.mu.Unlock()

	type answer struct {
		resp []byte
		err  error
		ev   bool
	}
	answers := make(chan answer, 2)
	go func() {
		answers <- answer{resp: d.server.HandleLine(context.Background(), rootPeer, []byte(`{"op":"integrity_status"}`))}
	}()
	go func() {
		rec, err := in.Capture(context.Background(), "test", "manual")
		if err == nil {
			snap, _, serr := in.evidence.Show(rec.ID)
			err = serr
			if serr == nil && !slices.ContainsFunc(snap.Errors, func(s string) bool { return strings.Contains(s, "busy") }) {
				err = fmt.Errorf("snapshot errors %q do not say the monitor was busy", snap.Errors)
			}
		}
		answers <- answer{err: err, ev: true}
	}()
	timeout := time.After(integrityWait + 20*time.Second)
	for range 2 {
		select {
		case a := <-answers:
			switch {
			case a.ev && a.err != nil:
				t.Errorf("evidence capture: %v", a.err)
			case !a.ev:
				var w struct {
					OK    bool       `json:"ok"`
					Error *api.Error `json:"error"`
				}
				if err := json.Unmarshal(a.resp, &w); err != nil || w.OK || w.Error == nil || w.Error.Code != api.CodeBusy {
					t.Errorf("integrity_status on a held monitor: %s", a.resp)
				}
			}
		case <-timeout:
			t.Fatal("a request waited without bound on the integrity monitor")
		}
	}
}
