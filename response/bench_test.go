package response

import (
	"net/netip"
	"runtime"
	"syscall"
	"testing"
	"time"
)

// addrN returns a distinct IPv4 address for every n < 2^24.
func addrN(n int) netip.Addr {
	return netip.AddrFrom4([4]byte{10, byte(n >> 16), byte(n >> 8), byte(n)})
}

// BenchmarkHandle measures policy throughput on one core: the default
// policy, auth failures from 10,000 rotating addresses (so rules fire and
// escalate), the clock moving 1ms per signal.
func BenchmarkHandle(b *testing.B) {
	c := &clock{t: t0}
	e := newEngine(b, Config{}, c)
	sig := authFailure("203.0.113.7")
	i := 0
	b.ReportAllocs()
	cpu := cpuTime()
	for b.Loop() {
		sig.IP = addrN(i % 10_000)
		c.advance(time.Millisecond)
		if _, err := e.Handle(sig); err != nil {
			b.Fatal(err)
		}
		i++
	}
	reportCPU(b, cpu)
}

// BenchmarkHandleFlood is a flood of distinct addresses against the default
// max_keys: every signal is a new key and evicts the oldest.
func BenchmarkHandleFlood(b *testing.B) {
	c := &clock{t: t0}
	e := newEngine(b, Config{}, c)
	sig := Signal{Kind: "auth_failure", Source: "webapp", Sender: webapp}
	i := 0
	b.ReportAllocs()
	cpu := cpuTime()
	for b.Loop() {
		sig.IP = addrN(i % (1 << 24))
		if _, err := e.Handle(sig); err != nil {
			b.Fatal(err)
		}
		i++
	}
	reportCPU(b, cpu)
}

// BenchmarkMemory feeds 1,000,000 distinct addresses (one auth failure each)
// and reports the heap held by the engine afterwards, for max_keys at the
// default (100,000) and at 1,000,000. Run with -benchtime=1x.
func BenchmarkMemory(b *testing.B) {
	for _, tc := range []struct {
		name    string
		maxKeys int
	}{{"max_keys=100k", 0}, {"max_keys=1M", 1_000_000}} {
		b.Run(tc.name, func(b *testing.B) {
			for b.Loop() {
				before := heap()
				c := &clock{t: t0}
				e := newEngine(b, Config{Limits: Limits{MaxKeys: tc.maxKeys}}, c)
				sig := Signal{Kind: "auth_failure", Source: "webapp", Sender: webapp}
				for i := range 1_000_000 {
					sig.IP = addrN(i)
					if _, err := e.Handle(sig); err != nil {
						b.Fatal(err)
					}
				}
				after := heap()
				keys := e.Stats().Keys
				b.ReportMetric(float64(after-before)/1e6, "MB")
				b.ReportMetric(float64(after-before)/float64(keys), "B/key")
				b.ReportMetric(float64(keys), "keys")
				runtime.KeepAlive(e)
			}
		})
	}
}

// BenchmarkMemoryOffenders blocks 100,000 distinct addresses (scan_detected,
// threshold 1) and reports the heap held by the escalation memory.
func BenchmarkMemoryOffenders(b *testing.B) {
	for b.Loop() {
		before := heap()
		c := &clock{t: t0}
		e := newEngine(b, Config{}, c)
		sig := Signal{Kind: "scan_detected", Source: "ids", Sender: webapp}
		for i := range 100_000 {
			sig.IP = addrN(i)
			if _, err := e.Handle(sig); err != nil {
				b.Fatal(err)
			}
		}
		after := heap()
		n := e.Stats().Offenders
		b.ReportMetric(float64(after-before)/1e6, "MB")
		b.ReportMetric(float64(after-before)/float64(n), "B/offender")
		b.ReportMetric(float64(n), "offenders")
		runtime.KeepAlive(e)
	}
}

func heap() uint64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

// cpuTime is this process's user+system CPU time. On a shared machine the
// CPU time per signal is steadier than the wall time.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// reportCPU reports wall-clock signals/s and CPU time per signal, and the
// signals/s one core would do at that CPU cost.
func reportCPU(b *testing.B, start time.Duration) {
	cpu := cpuTime() - start
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "signals/s")
	b.ReportMetric(float64(cpu.Nanoseconds())/float64(b.N), "cpu-ns/signal")
	b.ReportMetric(float64(b.N)/cpu.Seconds(), "signals/cpu-s")
}
