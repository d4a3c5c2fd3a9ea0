package logsource

import (
	"os"
	"strings"
	"testing"
)

// FuzzJournalLines: whatever journalctl prints, the reader does not panic,
// every entry has a valid cursor and a bounded message, and the reader
// accounts for every line.
func FuzzJournalLines(f *testing.F) {
	if b, err := os.ReadFile("testdata/journalctl-constructed.jsonl"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			f.Add(l + "\n")
		}
	}
	f.Add(`{"MESSAGE":[1,2,300],"__CURSOR":"s=1;i=2"}` + "\n")
	f.Add(`{"MESSAGE":null,"__CURSOR":"s=1"}` + "\n{}\n")
	f.Fuzz(func(t *testing.T, in string) {
		j, err := NewJournal(JournalOptions{Identifiers: []string{"sshd"}, MaxLine: 256, MaxMessage: 64})
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		j.readEntries(strings.NewReader(in), func(e Entry) {
			n++
			if !ValidCursor(e.Cursor) || len(e.Message) > 64 {
				t.Fatalf("entry %+v", e)
			}
		})
		if st := j.Stats(); int(st.Entries) != n || st.Entries+st.Dropped > uint64(strings.Count(in, "\n")+1) {
			t.Fatalf("stats %+v for %d entries", st, n)
		}
	})
}

// FuzzFileLines: whatever bytes a file holds, the lines delivered are
// bounded, offsets only grow, and the text plus newlines adds up to what
// was read.
func FuzzFileLines(f *testing.F) {
	f.Add([]byte("a\nbb\n\nccc"), 2)
	f.Add([]byte(strings.Repeat("x", 100)+"\ny\n"), 8)
	f.Fuzz(func(t *testing.T, data []byte, max int) {
		max = 1 + max%64
		if max < 1 {
			max = -max + 1
		}
		s, err := NewFile(FileOptions{Path: "/x", MaxLine: max})
		if err != nil {
			t.Fatal(err)
		}
		r := &reader{}
		var last int64
		lines := 0
		// feed in two pieces, as two reads would
		half := len(data) / 2
		for _, b := range [][]byte{data[:half], data[half:]} {
			s.consume(r, b, func(l Line) {
				lines++
				if len(l.Text) > max || l.Pos.Offset <= last && lines > 1 || l.Pos.Offset > int64(len(data)) {
					t.Fatalf("line %q offset %d (last %d), max %d", l.Text, l.Pos.Offset, last, max)
				}
				if data[l.Pos.Offset-1] != '\n' {
					t.Fatalf("offset %d is not after a newline", l.Pos.Offset)
				}
				last = l.Pos.Offset
			})
		}
		if want := strings.Count(string(data), "\n"); lines != want {
			t.Fatalf("%d lines for %d newlines", lines, want)
		}
		if r.off != int64(len(data)) || len(r.pending) > max {
			t.Fatalf("off %d pending %d", r.off, len(r.pending))
		}
	})
}
