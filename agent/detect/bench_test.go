package detect

import (
	"fmt"
	"math/rand/v2"
	"testing"
)

// The benchmarks print lines/s per core (run with -cpu 1). Their input is
// generated here; nothing large is committed.

// authLogMix is an auth.log as rsyslog writes it: about 95% of lines are
// unrelated (cron, sudo, systemd-logind, accepted logins, sessions), 5%
// are failed or probing ssh logins.
func authLogMix(n int) []Line {
	r := rand.New(rand.NewPCG(1, 2))
	other := []string{
		"Dec  1 09:%02d:%02d web1 CRON[%d]: pam_unix(cron:session): session opened for user root(uid=0) by (uid=0)",
		"Dec  1 09:%02d:%02d web1 CRON[%d]: pam_unix(cron:session): session closed for user root",
		"Dec  1 09:%02d:%02d web1 systemd-logind[%d]: New session 42 of user alice.",
		"Dec  1 09:%02d:%02d web1 sudo[%d]:    alice : TTY=pts/0 ; PWD=/home/alice ; USER=root ; COMMAND=/usr/bin/apt update",
		"Dec  1 09:%02d:%02d web1 sshd[%d]: Accepted publickey for alice from 192.0.2.5 port 50022 ssh2: ED25519 SHA256:Jq1bXc0Kz3m",
		"Dec  1 09:%02d:%02d web1 sshd[%d]: pam_unix(sshd:session): session opened for user alice(uid=1000) by (uid=0)",
		"Dec  1 09:%02d:%02d web1 sshd[%d]: Received disconnect from 192.0.2.5 port 50022:11: disconnected by user",
		"Dec  1 09:%02d:%02d web1 sshd[%d]: Disconnected from user alice 192.0.2.5 port 50022",
		"Dec  1 09:%02d:%02d web1 systemd[%d]: Started session-42.scope - Session 42 of User alice.",
	}
	bad := []string{
		"Dec  1 09:%02d:%02d web1 sshd[%d]: Failed password for root from 203.0.113.%d port 41234 ssh2",
		"Dec  1 09:%02d:%02d web1 sshd[%d]: Invalid user admin from 203.0.113.%d port 41234",
		"Dec  1 09:%02d:%02d web1 sshd[%d]: Failed password for invalid user admin from 203.0.113.%d port 41234 ssh2",
		"Dec  1 09:%02d:%02d web1 sshd[%d]: Connection closed by authenticating user root 203.0.113.%d port 41234 [preauth]",
	}
	lines := make([]Line, n)
	for i := range lines {
		m, s, pid := r.IntN(60), r.IntN(60), 1000+r.IntN(30000)
		var text string
		if r.IntN(100) < 5 {
			text = fmt.Sprintf(bad[r.IntN(len(bad))], m, s, pid, 1+r.IntN(250))
		} else {
			text = fmt.Sprintf(other[r.IntN(len(other))], m, s, pid)
		}
		lines[i] = Line{Text: text, Path: "/var/log/auth.log"}
	}
	return lines
}

// nginxAccessLog is a combined-format access log: mostly 200/304 for
// pages and assets, some 404s, 2% probes for well-known paths.
func nginxAccessLog(n int) []Line {
	r := rand.New(rand.NewPCG(3, 4))
	paths := []string{"/", "/index.html", "/static/app.js", "/static/style.css", "/api/v1/items?page=2", "/img/logo.png", "/blog/2026/11/hello"}
	probes := []string{"/wp-login.php", "/.env", "/.git/config", "/phpmyadmin/", "/cgi-bin/luci", "/vendor/phpunit/phpunit/src/Util/PHP/eval-stdin.php"}
	lines := make([]Line, n)
	for i := range lines {
		ip := fmt.Sprintf("198.51.100.%d", 1+r.IntN(250))
		path, status := paths[r.IntN(len(paths))], []int{200, 200, 200, 304, 404}[r.IntN(5)]
		if r.IntN(100) < 2 {
			path, status = probes[r.IntN(len(probes))], 404
		}
		lines[i] = Line{Path: "/var/log/nginx/access.log", Text: fmt.Sprintf(
			`%s - - [01/Dec/2026:09:%02d:%02d +0000] "GET %s HTTP/1.1" %d %d "https://example.com/" "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Safari/537.36"`,
			ip, r.IntN(60), r.IntN(60), path, status, 100+r.IntN(50000))}
	}
	return lines
}

// allMatching is sshd failures only, as journal lines.
func allMatching(n int) []Line {
	r := rand.New(rand.NewPCG(5, 6))
	forms := []string{
		"Failed password for root from 203.0.113.%d port %d ssh2",
		"Failed password for invalid user admin from 203.0.113.%d port %d ssh2",
		"Invalid user oracle from 2001:db8::%x port %d",
		"Connection closed by authenticating user root 203.0.113.%d port %d [preauth]",
	}
	lines := make([]Line, n)
	for i := range lines {
		lines[i] = Line{Text: fmt.Sprintf(forms[r.IntN(len(forms))], 1+r.IntN(250), 1024+r.IntN(60000)), Journal: true, Unit: "ssh.service", Identifier: "sshd-session"}
	}
	return lines
}

func benchLines(b *testing.B, set *Set, lines []Line, wantMatched func(int) bool) {
	b.Helper()
	matched := 0
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if set.Match(lines[i%len(lines)]).Outcome == Matched {
			matched++
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "lines/s")
	if b.N >= len(lines) && !wantMatched(matched*len(lines)/b.N) {
		b.Fatalf("%d of %d lines matched: the input is not what the benchmark says", matched, b.N)
	}
}

func builtinSet(b *testing.B) *Set {
	set, err := Builtin()
	if err != nil {
		b.Fatal(err)
	}
	return set
}

// BenchmarkAuthLogMix: auth.log, 95% unrelated lines, through the
// detectors of /var/log/auth.log (syslog header split, program checked).
func BenchmarkAuthLogMix(b *testing.B) {
	lines := authLogMix(100_000)
	benchLines(b, builtinSet(b).ForFile("/var/log/auth.log"), lines, func(m int) bool { return m > 3000 && m < 7000 })
}

// BenchmarkAuthJournalMix: the same lines as journal messages (no header),
// through every built-in detector, unit and identifier checked per line.
func BenchmarkAuthJournalMix(b *testing.B) {
	lines := authLogMix(100_000)
	for i := range lines {
		_, msg, _ := splitSyslog(lines[i].Text)
		lines[i] = Line{Text: msg, Journal: true, Unit: "ssh.service", Identifier: "sshd"}
	}
	benchLines(b, builtinSet(b), lines, func(m int) bool { return m > 3000 && m < 7000 })
}

// BenchmarkNginxAccessLog: an access log through nginx-botsearch.
func BenchmarkNginxAccessLog(b *testing.B) {
	lines := nginxAccessLog(100_000)
	benchLines(b, builtinSet(b).ForFile("/var/log/nginx/access.log"), lines, func(m int) bool { return m > 1000 && m < 3000 })
}

// BenchmarkAllMatching: every line is an sshd failure or probe.
func BenchmarkAllMatching(b *testing.B) {
	lines := allMatching(100_000)
	benchLines(b, builtinSet(b), lines, func(m int) bool { return m == len(lines) })
}
