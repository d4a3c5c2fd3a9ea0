package logsource_test

import (
	"context"
	"fmt"

	"github.com/parryhq/parry/agent/detect"
	"github.com/parryhq/parry/agent/logsource"
	"github.com/parryhq/parry/response"
)

// The wiring of a file source to the detectors: the detectors of the path
// are chosen once, each line becomes at most one signal, and the position
// is saved after the signal is handled.
func ExampleFile() {
	set, err := detect.Builtin()
	if err != nil {
		panic(err)
	}
	const path = "/var/log/auth.log"
	dets := set.ForFile(path)
	var saved logsource.Position // from the store
	src, err := logsource.NewFile(logsource.FileOptions{Path: path, Start: saved})
	if err != nil {
		panic(err)
	}
	handle := func(response.Signal) {}  // the policy engine
	save := func(logsource.Position) {} // the store
	src.Run(context.TODO(), func(l logsource.Line) {
		r := dets.Match(detect.Line{Text: l.Text, Cut: l.Cut, Path: l.Path, Source: "auth.log", Time: l.Time})
		if r.Outcome == detect.Matched {
			handle(r.Signal)
		}
		save(l.Pos)
	})
}

// The journal: one journalctl for all detectors that read the journal;
// each entry goes to the detectors whose unit and identifier it has.
func ExampleJournal() {
	set, err := detect.Builtin()
	if err != nil {
		panic(err)
	}
	sshd := detect.NewSet(set.Get("sshd")) // on by default
	units, idents := sshd.Journal()
	src, err := logsource.NewJournal(logsource.JournalOptions{Units: units, Identifiers: idents, Cursor: "" /* from the store */})
	if err != nil {
		panic(err)
	}
	src.Run(context.TODO(), func(e logsource.Entry) {
		r := sshd.Match(detect.Line{Text: e.Message, Cut: e.Cut, Journal: true, Unit: e.Unit, Identifier: e.Identifier, Source: "journal", Time: e.Time})
		fmt.Println(r.Outcome, e.Cursor)
	})
}
