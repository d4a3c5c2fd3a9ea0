package e2e

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/parryhq/parry/test/netns"
)

// BenchmarkBlockLatencySubscribers: a block's acknowledgement latency
// with no event subscribers, and with 10 following it (`op events`), one
// of which never reads, in the same run and on the same daemon: rounds of
// each alternate, so drift (the disk, the other tenants) falls on both
// alike. Prints median and p99 of each and their ratio.
//
//	go test ./test/e2e -run '^$' -bench BlockLatencySubscribers -benchtime 4000x
func BenchmarkBlockLatencySubscribers(b *testing.B) {
	ns := netns.New(b)
	d := newDaemon(b, ns)
	d.WriteConfig(quietConfig + "control:\n  write_timeout: 1h\n  rate: 100000\n  burst: 100000\n")
	d.Start()
	c, err := net.Dial("unix", d.Socket)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	r := bufio.NewReader(c)
	block := func(i int) time.Duration {
		req := fmt.Sprintf(`{"op":"block","targets":["%s"],"for":"1h"}`+"\n", ipN(i))
		t0 := time.Now()
		if _, err := io.WriteString(c, req); err != nil {
			b.Fatal(err)
		}
		line, err := r.ReadString('\n')
		if err != nil || !strings.HasPrefix(line, `{"ok":true`) {
			b.Fatalf("block: %q %v", line, err)
		}
		return time.Since(t0)
	}
	// subscribe opens the 10 subscribers: 9 read everything, one never
	// reads after its answer line.
	subscribe := func() (closeAll func()) {
		var conns []net.Conn
		for i := range 10 {
			sc, sr := subscribeRaw(b, d.Socket, `{"op":"events"}`)
			conns = append(conns, sc)
			if i > 0 {
				go io.Copy(io.Discard, sr)
			}
		}
		return func() {
			for _, sc := range conns {
				sc.Close()
			}
		}
	}
	const rounds = 20
	per := max(b.N/(2*rounds), 1)
	var none, ten []time.Duration
	n := 0
	b.ResetTimer()
	for range rounds {
		for range per {
			none = append(none, block(n))
			n++
		}
		closeAll := subscribe()
		for range per {
			ten = append(ten, block(n))
			n++
		}
		closeAll()
	}
	b.StopTimer()
	m0, p0 := percentile(none, 0.5), percentile(none, 0.99)
	m1, p1 := percentile(ten, 0.5), percentile(ten, 0.99)
	b.ReportMetric(float64(m0.Microseconds()), "none-median-µs")
	b.ReportMetric(float64(p0.Microseconds()), "none-p99-µs")
	b.ReportMetric(float64(m1.Microseconds()), "10subs-median-µs")
	b.ReportMetric(float64(p1.Microseconds()), "10subs-p99-µs")
	b.Logf("block ack, %d blocks each: no subscriber median %v p99 %v; 10 subscribers (1 stalled) median %v p99 %v; ratio median %.3f p99 %.3f",
		len(none), m0, p0, m1, p1, float64(m1)/float64(m0), float64(p1)/float64(p0))
}
