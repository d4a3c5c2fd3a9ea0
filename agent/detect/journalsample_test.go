package detect_test

import (
	"bufio"
	"encoding/json"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/parryhq/parry/agent/detect"
)

// TestRecordedJournalUnitless runs the sshd detector over the journal that
// Debian 12's sshd wrote to the real journald (test/sshlab/testdata): an
// entry journald left without _SYSTEMD_UNIT (its sender had exited) must be
// decided exactly as if it had the unit, since its trusted _UID is 0; a
// unitless entry from another uid (a user's forged "sshd" line) reaches no
// detector.
func TestRecordedJournalUnitless(t *testing.T) {
	set, err := detect.Builtin()
	if err != nil {
		t.Fatal(err)
	}
	sshd := detect.NewSet(set.Get("sshd"))
	f, err := os.Open("../../test/sshlab/testdata/openssh-9.2.journal.json")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	var unitless, unitlessMatched, matched int
	for sc.Scan() {
		var e struct {
			Message    string `json:"MESSAGE"`
			Unit       string `json:"_SYSTEMD_UNIT"`
			Identifier string `json:"SYSLOG_IDENTIFIER"`
			UID        string `json:"_UID"`
		}
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			t.Fatalf("%v: %s", err, sc.Text())
		}
		if e.Identifier != "sshd" {
			continue
		}
		l := detect.Line{Text: e.Message, Journal: true, Unit: e.Unit, Identifier: e.Identifier, Root: e.UID == "0", Source: "journal", Time: time.Now()}
		got := sshd.Match(l)
		withUnit := l
		withUnit.Unit = "ssh.service"
		want := sshd.Match(withUnit)
		if got.Outcome != want.Outcome || got.Signal.IP != want.Signal.IP || got.Signal.Kind != want.Signal.Kind {
			t.Errorf("%q (unit %q, uid %s): %v %v %s, with the unit %v %v %s", e.Message, e.Unit, e.UID,
				got.Outcome, got.Signal.IP, got.Signal.Kind, want.Outcome, want.Signal.IP, want.Signal.Kind)
		}
		if got.Outcome == detect.Matched {
			matched++
			if got.Signal.IP == netip.MustParseAddr("6.6.6.6") || got.Signal.IP == netip.MustParseAddr("2001:db8::66") {
				t.Errorf("%q yields the injected address %v", e.Message, got.Signal.IP)
			}
		}
		if e.Unit == "" {
			unitless++
			if got.Outcome == detect.Matched {
				unitlessMatched++
			}
			forged := l
			forged.Root = false
			if r := sshd.Match(forged); r.Outcome != detect.NotApplicable {
				t.Errorf("%q without unit from a non-root uid: %v, want not_applicable", e.Message, r.Outcome)
			}
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	t.Logf("%d matched, %d entries without unit, %d of them matched", matched, unitless, unitlessMatched)
	if unitless == 0 || unitlessMatched == 0 {
		t.Fatalf("the sample has %d unitless entries, %d matched: it no longer shows journald's race", unitless, unitlessMatched)
	}
}
