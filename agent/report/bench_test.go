package report

import (
	"bytes"
	"fmt"
	"testing"
	"time"
)

// BenchmarkReadBuild100k: parse and summarise an audit log of 100,000 lines
// (signals and blocks from 5,000 addresses), as parry report does.
func BenchmarkReadBuild100k(b *testing.B) {
	var log bytes.Buffer
	t0 := time.Date(2026, 3, 10, 0, 0, 0, 0, time.UTC)
	for i := range 100_000 {
		ip := fmt.Sprintf("10.%d.%d.%d", i%5000/65536, i%5000/256%256, i%5000%256)
		at := t0.Add(time.Duration(i) * 800 * time.Millisecond).Format(time.RFC3339Nano)
		if i%10 == 9 {
			fmt.Fprintf(&log, `{"seq":%d,"time":%q,"event":"block","fields":{"id":"d%d","action":"block","targets":[%q],"until":"permanent","source":"policy","rule":"auth"},"prev":"x","hash":"y"}`+"\n", i+1, at, i, ip)
		} else {
			fmt.Fprintf(&log, `{"seq":%d,"time":%q,"event":"signal","fields":{"kind":"auth_failure","ip":%q,"sender":"uid=33(www-data) pid=9","outcome":"counted"},"prev":"x","hash":"y"}`+"\n", i+1, at, ip)
		}
	}
	data := log.Bytes()
	b.SetBytes(int64(len(data)))
	b.ResetTimer()
	for range b.N {
		r, err := Summarize(bytes.NewReader(data), Chain{}, "h", t0, t0.Add(24*time.Hour))
		if err != nil || r.Totals.Signals != 90_000 {
			b.Fatal(err, r.Totals)
		}
	}
}

// BenchmarkSince1hOf100k: the usual case on a long-lived host: a 1h window
// at the end of a 100,000-line log (old lines skipped without decoding).
func BenchmarkSince1hOf100k(b *testing.B) {
	var log bytes.Buffer
	t0 := time.Date(2026, 3, 10, 0, 0, 0, 0, time.UTC)
	for i := range 100_000 {
		at := t0.Add(time.Duration(i) * 800 * time.Millisecond).Format(time.RFC3339Nano)
		fmt.Fprintf(&log, `{"seq":%d,"time":%q,"event":"signal","fields":{"kind":"auth_failure","ip":"10.0.%d.%d","outcome":"counted"},"prev":"x","hash":"y"}`+"\n", i+1, at, i/256%256, i%256)
	}
	data := log.Bytes()
	end := t0.Add(100_000 * 800 * time.Millisecond)
	b.SetBytes(int64(len(data)))
	for range b.N {
		r, err := Summarize(bytes.NewReader(data), Chain{}, "h", end.Add(-time.Hour), end)
		if err != nil || r.Totals.Signals != 4500 {
			b.Fatal(err, r.Totals)
		}
	}
}
