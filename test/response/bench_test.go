package response_test

import (
	"bufio"
	"bytes"
	"fmt"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/parryhq/parry/test/daemon"
	"github.com/parryhq/parry/test/netns"
)

// benchConfig lifts the per-peer limits: the benchmark is one sender
// measuring the daemon, not the limits (which are tested elsewhere). The
// integrity watcher is off: its first baseline hashes the host's files and
// was a tenth of parryd's CPU during the measurement.
const benchConfig = `integrity:
  enabled: false
control:
  rate: 1000000
  burst: 1000000
response:
  limits:
    sender_rate: 1000000
    sender_burst: 1000000
`

func benchDaemon(b *testing.B) *daemon.Daemon {
	netns.RequireRoot(b)
	ns := netns.New(b)
	d := newDaemon(b, ns, benchConfig)
	d.Start()
	return d
}

// signalLine is signal i: a distinct address per i (counted, no decision),
// except that when decideEvery > 0 every decideEvery-th group of five goes
// to one address, whose fifth signal makes a block decision.
func signalLine(i, decideEvery int) []byte {
	n := i
	if decideEvery > 0 && i%decideEvery < 5 {
		n = 1<<23 + i/decideEvery // the attacker of this group, five signals
	}
	return fmt.Appendf(nil, `{"op":"signal","kind":"auth_failure","ip":"10.%d.%d.%d","source":"bench"}`+"\n",
		byte(n>>16), byte(n>>8), byte(n))
}

// BenchmarkSocketThroughput: sustained requests through the control
// socket, pipelined in batches of 256 over 4 connections, bounded to
// 200,000 requests or 20 s. op=ping is the socket alone, op=signal adds the
// policy and the audit record (every signal is counted, none decides).
// Run: go test ./test/response -run '^$' -bench SocketThroughput -benchtime=1x
func BenchmarkSocketThroughput(b *testing.B) {
	d := benchDaemon(b)
	for _, op := range []string{"ping", "signal"} {
		b.Run("op="+op, func(b *testing.B) {
			for b.Loop() {
				const conns, total, batch = 4, 200_000, 256
				deadline := time.Now().Add(20 * time.Second)
				var wg sync.WaitGroup
				var mu sync.Mutex
				sent := 0
				start := time.Now()
				cpu0 := cpuTime(b, d)
				for c := range conns {
					wg.Add(1)
					go func() {
						defer wg.Done()
						n := pump(b, d.Socket, c, conns, total/conns, batch, deadline, func(i int) []byte {
							if op == "ping" {
								return []byte(`{"op":"ping"}` + "\n")
							}
							return signalLine(i, 0)
						})
						mu.Lock()
						sent += n
						mu.Unlock()
					}()
				}
				wg.Wait()
				el := time.Since(start)
				cpu := cpuTime(b, d) - cpu0
				b.ReportMetric(float64(sent)/el.Seconds(), "req/s")
				b.ReportMetric(float64(sent), "requests")
				b.ReportMetric(float64(cpu.Microseconds())/float64(sent), "parryd-cpu-µs/req")
				b.ReportMetric(float64(sent)/cpu.Seconds(), "req/parryd-cpu-s")
			}
		})
	}
}

// pump sends n requests (line(i) for i = c, c+stride, ...) in pipelined
// batches and reads every answer; it stops early at the deadline.
func pump(b *testing.B, sock string, c, stride, n, batch int, deadline time.Time, line func(int) []byte) int {
	conn, err := net.Dial("unix", sock)
	if err != nil {
		b.Error(err)
		return 0
	}
	defer conn.Close()
	_ = conn.SetDeadline(deadline.Add(10 * time.Second))
	r := bufio.NewReaderSize(conn, 1<<20)
	w := bufio.NewWriterSize(conn, 1<<20)
	done := 0
	for done < n && time.Now().Before(deadline) {
		k := min(batch, n-done)
		for j := range k {
			w.Write(line(c + (done+j)*stride))
		}
		if err := w.Flush(); err != nil {
			b.Error(err)
			return done
		}
		for range k {
			resp, err := r.ReadSlice('\n')
			if err != nil {
				b.Error(err)
				return done
			}
			if len(resp) < 10 || string(resp[:10]) != `{"ok":true` {
				b.Errorf("refused: %s", resp)
				return done
			}
		}
		done += k
	}
	return done
}

// BenchmarkSignalLatency: signals at a fixed 10,000/s for 3 s (30,000) on one
// connection, open loop (sent on schedule whatever the answers do); the
// latency is from writing a signal to reading its answer, which for a
// deciding signal comes after the block is in the store and the kernel.
// One signal in 500 completes a threshold of 5 and blocks an address.
// Run: go test ./test/response -run '^$' -bench SignalLatency -benchtime=1x
func BenchmarkSignalLatency(b *testing.B) {
	d := benchDaemon(b)
	for _, rate := range []int{1000, 10_000} {
		// decide_every=-1 sends ping instead: the socket alone, the baseline
		// for what this machine's scheduling adds to every request
		for _, decideEvery := range []int{-1, 0, 500} {
			b.Run(fmt.Sprintf("rate=%d/decide_every=%d", rate, decideEvery), func(b *testing.B) { latency(b, d, rate, decideEvery) })
		}
	}
}

func latency(b *testing.B, d *daemon.Daemon, rate, decideEvery int) {
	for b.Loop() {
		const dur = 3 * time.Second
		total := rate * int(dur/time.Second)
		conn, err := net.Dial("unix", d.Socket)
		if err != nil {
			b.Fatal(err)
		}
		_ = conn.SetDeadline(time.Now().Add(dur + 30*time.Second))
		sentAt := make([]time.Time, total)
		lat := make([]time.Duration, 0, total)
		var decideLat []time.Duration
		readDone := make(chan error, 1)
		go func() {
			r := bufio.NewReaderSize(conn, 1<<20)
			for i := range total {
				resp, err := r.ReadSlice('\n')
				if err != nil {
					readDone <- err
					return
				}
				l := time.Since(sentAt[i])
				lat = append(lat, l)
				if decideEvery > 0 && i%decideEvery == 4 {
					if !containsDecided(resp) {
						readDone <- fmt.Errorf("signal %d made no decision: %s", i, resp)
						return
					}
					decideLat = append(decideLat, l)
				}
			}
			readDone <- nil
		}()
		start := time.Now()
		cpu0 := cpuTime(b, d)
		const tick = time.Millisecond
		per := max(1, rate/int(time.Second/tick))
		w := bufio.NewWriterSize(conn, 64<<10)
		pace := time.NewTicker(tick) // the load generator's pace, not synchronisation
		defer pace.Stop()
		for i := 0; i < total; {
			if time.Until(start.Add(time.Duration(i/per)*tick)) > 0 {
				<-pace.C
			}
			for j := 0; j < per && i < total; j++ {
				sentAt[i] = time.Now()
				if decideEvery < 0 {
					w.WriteString(`{"op":"ping"}` + "\n")
				} else {
					w.Write(signalLine(i, decideEvery))
				}
				i++
			}
			if err := w.Flush(); err != nil {
				b.Fatal(err)
			}
		}
		if err := <-readDone; err != nil {
			b.Fatal(err)
		}
		conn.Close()
		el := time.Since(start)
		b.ReportMetric(float64(total)/el.Seconds(), "signals/s")
		b.ReportMetric(float64((cpuTime(b, d)-cpu0).Microseconds())/float64(total), "parryd-cpu-µs/signal")
		b.ReportMetric(ms(pct(lat, 50)), "p50_ms")
		b.ReportMetric(ms(pct(lat, 99)), "p99_ms")
		b.ReportMetric(ms(pct(lat, 100)), "max_ms")
		b.ReportMetric(ms(pct(decideLat, 50)), "decide_p50_ms")
		b.ReportMetric(ms(pct(decideLat, 99)), "decide_p99_ms")
		b.ReportMetric(float64(len(decideLat)), "decisions")
	}
}

func containsDecided(resp []byte) bool {
	return bytes.Contains(resp, []byte(`"outcome":"decided"`))
}

func pct(d []time.Duration, p int) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	i := min(len(s)-1, len(s)*p/100)
	return s[i]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// cpuTime is parryd's user+system CPU time so far, from /proc/PID/stat (in
// clock ticks of 10 ms: read it over seconds, not per request). ip netns
// exec execs parryd, so the PID is parryd's.
func cpuTime(b *testing.B, d *daemon.Daemon) time.Duration {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", d.PID()))
	if err != nil {
		b.Fatal(err)
	}
	f := strings.Fields(string(raw[bytes.LastIndexByte(raw, ')')+2:]))
	ut, _ := strconv.Atoi(f[11])
	st, _ := strconv.Atoi(f[12])
	return time.Duration(ut+st) * 10 * time.Millisecond
}
