package e2e

import (
	"bufio"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/parryhq/parry/test/daemon"
	"github.com/parryhq/parry/test/netns"
)

// elementWatch follows `nft monitor new elements` in a namespace (the
// anchors' method, /work/shared/anchors/LOGBAN.md) and records when each
// address first appears in one of the table's sets.
type elementWatch struct {
	mu   sync.Mutex
	seen map[string]time.Time
	cond *sync.Cond
}

var ipv4Re = regexp.MustCompile(`\b\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}\b`)

func watchElements(b *testing.B, ns *netns.NS) *elementWatch {
	w := &elementWatch{seen: map[string]time.Time{}}
	w.cond = sync.NewCond(&w.mu)
	ctx, cancel := context.WithCancel(context.Background())
	cmd := ns.Command(ctx, "nft", "monitor", "new", "elements")
	out, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { cancel(); _ = cmd.Wait() })
	go func() {
		sc := bufio.NewScanner(out)
		sc.Buffer(nil, 16<<20)
		for sc.Scan() {
			now := time.Now()
			ips := ipv4Re.FindAllString(sc.Text(), -1)
			w.mu.Lock()
			for _, ip := range ips {
				if _, ok := w.seen[ip]; !ok {
					w.seen[ip] = now
				}
			}
			w.cond.Broadcast()
			w.mu.Unlock()
		}
	}()
	// nft monitor subscribes before it prints anything: give it a moment
	// by waiting for an element it must see.
	ns.MustRun(b, "nft", "add", "table", "inet", "monprobe")
	ns.MustRun(b, "nft", "add", "set", "inet", "monprobe", "s", "{ type ipv4_addr; }")
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		ns.MustRun(b, "nft", "add", "element", "inet", "monprobe", "s", "{ 192.0.2.254 }")
		if _, ok := w.at("192.0.2.254", 200*time.Millisecond); ok {
			break
		}
	}
	ns.MustRun(b, "nft", "delete", "table", "inet", "monprobe")
	return w
}

// at waits up to timeout for ip and returns when it was seen.
func (w *elementWatch) at(ip string, timeout time.Duration) (time.Time, bool) {
	deadline := time.Now().Add(timeout)
	t := time.AfterFunc(timeout, func() { w.mu.Lock(); w.cond.Broadcast(); w.mu.Unlock() })
	defer t.Stop()
	w.mu.Lock()
	defer w.mu.Unlock()
	for {
		if at, ok := w.seen[ip]; ok {
			return at, true
		}
		if time.Now().After(deadline) {
			return time.Time{}, false
		}
		w.cond.Wait()
	}
}

func syslogFailure(ip string, i int) string {
	return fmt.Sprintf("Dec  1 08:37:12 bench sshd[%d]: Failed password for root from %s port %d ssh2\n", 2000+i%5000, ip, 30000+i%30000)
}

func appendFile(b *testing.B, f *os.File, s string) time.Time {
	t0 := time.Now()
	if _, err := f.WriteString(s); err != nil {
		b.Fatal(err)
	}
	return t0
}

// sourceBenchDaemon is parryd with a file source (sshd detector) on log,
// with the extra response config given.
func sourceBenchDaemon(b *testing.B, ns *netns.NS, log, response string) *daemon.Daemon {
	cfg := quietConfig + fmt.Sprintf("sources:\n  journal:\n    enabled: false\n  files:\n    - path: %s\n      detectors: [sshd]\n", log) + response
	d := daemon.New(b, ns, daemon.Options{Config: cfg})
	d.Start()
	return d
}

// BenchmarkSourceLineToKernel: the line that completes an sshd brute force
// (the 5th failure of a fresh address; the 4 before it written 20 ms apart,
// then an idle of 0.5–2 s as in the anchors' method) appended to the file
// parryd follows, until `nft monitor` shows the address in the kernel.
// Compare: sshguard 4.5–4.6 ms, fail2ban 250–730 ms (median; anchors file
// /work/shared/anchors/LOGBAN.md, same machine class, N=3).
func BenchmarkSourceLineToKernel(b *testing.B) {
	ns := netns.New(b)
	log := filepath.Join(b.TempDir(), "auth.log")
	if err := os.WriteFile(log, nil, 0o644); err != nil {
		b.Fatal(err)
	}
	w := watchElements(b, ns)
	d := sourceBenchDaemon(b, ns, log, "")
	netns.Eventually(b, 10*time.Second, "the file source open", func() bool {
		st := d.MustParry("source", "status")
		return strings.Contains(st, ": reading;")
	})
	f, err := os.OpenFile(log, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	rng := rand.New(rand.NewPCG(1, 2))
	var lat []time.Duration
	n := b.N + 1 // one warm-up sample, discarded
	b.ResetTimer()
	for i := range n {
		ip := fmt.Sprintf("10.77.%d.%d", i>>8&255, i&255)
		for j := range 4 {
			appendFile(b, f, syslogFailure(ip, j))
			time.Sleep(20 * time.Millisecond) // the attacker's pace, not synchronisation
		}
		time.Sleep(time.Duration(500+rng.IntN(1500)) * time.Millisecond)
		t0 := appendFile(b, f, syslogFailure(ip, 4))
		at, ok := w.at(ip, 10*time.Second)
		if !ok {
			b.Fatalf("%s never reached the kernel", ip)
		}
		if i > 0 {
			lat = append(lat, at.Sub(t0))
		}
	}
	b.StopTimer()
	med, p99 := percentile(lat, 0.5), percentile(lat, 0.99)
	b.ReportMetric(float64(med.Microseconds()), "median-µs")
	b.ReportMetric(float64(p99.Microseconds()), "p99-µs")
	b.Logf("file source, 5th failure written → element in the kernel: median %v, p99 %v, min %v, max %v (n=%d); anchors: sshguard 4.5–4.6 ms, fail2ban 252–726 ms (median)",
		med, p99, percentile(lat, 0), percentile(lat, 1), len(lat))
}

// BenchmarkSource100k: 100,000 auth.log lines (95 % unrelated; 5,000
// failures from 2,000 addresses, 1,000 of them with 3 failures and 1,000
// with 2; threshold 3) appended in one write to the file parryd follows,
// until the 1,000th ban is in the kernel; then the set must hold exactly
// those 1,000. Compare (anchors file): sshguard 4.4–5.7 s, fail2ban
// 8.5–12 s.
func BenchmarkSource100k(b *testing.B) {
	text, want := auth100k()
	const response = "response:\n  sender_block_cap:\n    max: 100000\n  rules:\n" +
		"    - {name: auth-failure, kind: auth_failure, key: ip, threshold: 3, window: 15m, action: block, duration: 1h}\n"
	var took, first []time.Duration
	for range b.N {
		ns := netns.New(b)
		log := filepath.Join(b.TempDir(), "auth.log")
		if err := os.WriteFile(log, nil, 0o644); err != nil {
			b.Fatal(err)
		}
		w := watchElements(b, ns)
		d := sourceBenchDaemon(b, ns, log, response)
		netns.Eventually(b, 10*time.Second, "the file source open", func() bool {
			return strings.Contains(d.MustParry("source", "status"), ": reading;")
		})
		f, err := os.OpenFile(log, os.O_APPEND|os.O_WRONLY, 0)
		if err != nil {
			b.Fatal(err)
		}
		b.ResetTimer()
		t0 := appendFile(b, f, text)
		// The kernel's own view, polled every 10 ms (nft -j list set): nft
		// monitor, which the latency benchmark uses, prints a batch of a
		// thousand elements more slowly than parryd puts them in.
		var lastAt time.Time
		netns.Poll(60*time.Second, 10*time.Millisecond, func() bool {
			if len(kernelElems(b, ns, d.Table)) >= len(want) {
				lastAt = time.Now()
				return true
			}
			return false
		})
		if lastAt.IsZero() {
			b.Fatal("the bans never all reached the kernel")
		}
		firstAt, ok := w.at(want[0], 60*time.Second)
		for _, ip := range want[1:] {
			if at, ok2 := w.at(ip, 0); ok2 && at.Before(firstAt) {
				firstAt = at
			}
		}
		if !ok {
			b.Fatal("nft monitor never saw the first ban")
		}
		last := lastAt
		b.StopTimer()
		f.Close()
		took = append(took, last.Sub(t0))
		first = append(first, firstAt.Sub(t0))
		if got := len(kernelElems(b, ns, d.Table)); got != len(want) {
			b.Errorf("the kernel holds %d elements, want %d", got, len(want))
		}
		b.ReportMetric(float64(rss(b, d)>>10), "RSS-KiB")
		d.Stop()
	}
	med := percentile(took, 0.5)
	b.ReportMetric(float64(med.Milliseconds()), "last-ban-ms")
	b.Logf("100k lines appended at once → last of %d bans in the kernel: median %v (runs %v), first ban %v; anchors: sshguard 4.40–5.67 s, fail2ban 8.45–12.09 s",
		len(want), med, took, percentile(first, 0.5))
}

// auth100k builds the 100,000-line log and the 1,000 addresses it must ban.
func auth100k() (string, []string) {
	rng := rand.New(rand.NewPCG(7, 11))
	var lines []string
	var want []string
	for a := range 2000 {
		ip := fmt.Sprintf("198.18.%d.%d", a>>8, a&255)
		n := 2
		if a < 1000 {
			n = 3
			want = append(want, ip)
		}
		for range n {
			lines = append(lines, syslogFailure(ip, len(lines)))
		}
	}
	other := []string{
		"Dec  1 08:37:12 bench sshd[%d]: Accepted publickey for alice from 192.0.2.%d port 50022 ssh2: ED25519 SHA256:abc\n",
		"Dec  1 08:37:12 bench sshd[%d]: pam_unix(sshd:session): session opened for user alice(uid=1000) by (uid=0) %d\n",
		"Dec  1 08:37:12 bench sshd[%d]: Received disconnect from 192.0.2.%d port 50022:11: disconnected by user\n",
		"Dec  1 08:37:12 bench sshd[%d]: Disconnected from user alice 192.0.2.%d port 50022\n",
		"Dec  1 08:37:12 bench CRON[%d]: pam_unix(cron:session): session closed for user root %d\n",
		"Dec  1 08:37:12 bench systemd[1]: Started session-%d.scope - Session %d of User alice.\n",
		"Dec  1 08:37:12 bench systemd-logind[%d]: New session %d of user alice.\n",
	}
	for len(lines) < 100_000 {
		lines = append(lines, fmt.Sprintf(other[rng.IntN(len(other))], rng.IntN(30000), rng.IntN(250)))
	}
	rng.Shuffle(len(lines), func(i, j int) { lines[i], lines[j] = lines[j], lines[i] })
	return strings.Join(lines, ""), want
}
