package integrity

import (
	"bytes"
	"context"
	"crypto/md5"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/parryhq/parry/agent/api"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
	"golang.org/x/sys/unix"
)

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("this test needs root and CI is set")
		}
		t.Skip("needs root (chown, security.capability, remediation)")
	}
}

// testConfig selects dir only, with no rules unless given.
func testConfig(dir string, rules ...Rule) Config {
	if rules == nil {
		rules = []Rule{}
	}
	iv := api.Duration(0)
	return Config{Paths: []PathSpec{{Path: dir}}, Rules: rules, PackageManager: "none", ScanInterval: &iv, Workers: 2}
}

func writeFile(t *testing.T, p, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// genTree writes a small tree: files at two depths, a symlink, an empty file.
func genTree(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	for i := range 5 {
		writeFile(t, filepath.Join(dir, fmt.Sprintf("f%d.txt", i)), strings.Repeat("x", i*1000))
		writeFile(t, filepath.Join(dir, "sub", fmt.Sprintf("g%d.conf", i)), fmt.Sprintf("key=%d\n", i))
	}
	if err := os.Symlink("f1.txt", filepath.Join(dir, "link")); err != nil {
		t.Fatal(err)
	}
	return dir
}

func scanMap(t *testing.T, cfg Config) map[string]Entry {
	t.Helper()
	sc, err := NewScanner(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ents, err := sc.Scan(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return ents
}

func checker(t *testing.T, rules []Rule) *Checker {
	t.Helper()
	rs, err := NewRules(rules)
	if err != nil {
		t.Fatal(err)
	}
	return &Checker{Rules: rs, Now: time.Now}
}

func TestConfigYAML(t *testing.T) {
	const doc = `
paths:
  - path: /etc
    recursive: true
    exclude: ["*.swp", "/etc/mtab"]
rules:
  - path: "/etc/shadow"
    mode_max: "0640"
    owner: root
  - path: "/app/**"
    deny: [world_readable, world_writable, setuid]
    remediate: true
hash: blake3
io_rate: 50MiB
nice: 10
scan_interval: 30m
debounce: 100ms
`
	var c Config
	dec := yaml.NewDecoder(strings.NewReader(doc))
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil {
		t.Fatal(err)
	}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	c = c.WithDefaults()
	if c.Hash != HashBLAKE3 || c.ScanInterval.D() != 30*time.Minute || c.Debounce.D() != 100*time.Millisecond || len(c.Rules) != 2 {
		t.Fatalf("decoded %+v", c)
	}
	if err := Defaults().Validate(); err != nil {
		t.Fatalf("defaults invalid: %v", err)
	}
	dec = yaml.NewDecoder(strings.NewReader("paths: []\nhashes: sha1\n"))
	dec.KnownFields(true)
	if err := dec.Decode(&Config{}); err == nil {
		t.Fatal("unknown key accepted")
	}
	bad := []Config{
		{Paths: []PathSpec{{Path: "etc"}}},
		{Hash: "md5"},
		{IORate: "fast"},
		{Nice: 40},
		{Rules: []Rule{{Path: "/x", ModeMax: "999"}}},
		{Rules: []Rule{{Path: "/x", Deny: []string{"world_executable"}}}},
		{Rules: []Rule{{Path: "/x"}}},
		{Exclude: []string{"a/b"}},
	}
	for _, c := range bad {
		if err := c.Validate(); err == nil {
			t.Errorf("accepted %+v", c)
		}
	}
}

func TestGlob(t *testing.T) {
	cases := []struct {
		pat, path string
		want      bool
	}{
		{"*.swp", "/etc/.x.swp", true},
		{"/etc/mtab", "/etc/mtab", true},
		{"/app/**", "/app/a/b/c", true},
		{"/app/**", "/app", true},
		{"/app/**/*.key", "/app/a/b/c.key", true},
		{"/app/**/*.key", "/app/c.key", true},
		{"/app/*", "/app/a/b", false},
		{"/etc/shadow", "/etc/shadow-", false},
	}
	for _, c := range cases {
		if got := compileGlob(c.pat).match(c.path); got != c.want {
			t.Errorf("%s ~ %s = %v, want %v", c.pat, c.path, got, c.want)
		}
	}
	f := false
	sel := NewSelection(Config{Paths: []PathSpec{{Path: "/etc", Exclude: []string{"/etc/ssl/**", "*.swp"}}, {Path: "/opt", Recursive: &f}}})
	for p, want := range map[string]bool{"/etc": true, "/etc/a/b": true, "/etc/ssl/x": false, "/etc/a/.b.swp": false,
		"/opt/x": true, "/opt/x/y": false, "/usr": false, "/etcx": false} {
		if got := sel.Selected(p); got != want {
			t.Errorf("Selected(%s) = %v, want %v", p, got, want)
		}
	}
}

func TestUnchangedTreeIsClean(t *testing.T) {
	dir := genTree(t)
	cfg := testConfig(dir)
	a, b := scanMap(t, cfg), scanMap(t, cfg)
	if len(a) != 13 { // dir, 5 files, link, sub, 5 files
		t.Fatalf("scanned %d entries, want 13: %v", len(a), slices.Sorted(mapKeysT(a)))
	}
	if fs := checker(t, nil).Compare(a, b); len(fs) != 0 {
		t.Fatalf("findings on an unchanged tree: %v", fs)
	}
	if e := a[filepath.Join(dir, "link")]; e.Type != TypeSymlink || e.Target != "f1.txt" {
		t.Fatalf("symlink recorded as %+v", e)
	}
	if e := a[filepath.Join(dir, "sub")]; e.Type != TypeDir {
		t.Fatalf("directory recorded as %+v", e)
	}
}

func mapKeysT[V any](m map[string]V) func(func(string) bool) {
	return func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

func TestEveryAttributeChange(t *testing.T) {
	requireRoot(t)
	cases := []struct {
		name   string
		path   string // relative
		mutate func(t *testing.T, p string)
		kind   string
		attrs  []string // must be among the changes
	}{
		{"content same size", "f1.txt", func(t *testing.T, p string) { rewriteKeepTimes(t, p, strings.Repeat("y", 1000)) }, KindChanged, []string{"hash"}},
		{"size", "f2.txt", func(t *testing.T, p string) { writeFile(t, p, "short") }, KindChanged, []string{"hash", "size", "mtime"}},
		{"mode", "f1.txt", func(t *testing.T, p string) { must(t, os.Chmod(p, 0o600)) }, KindChanged, []string{"mode", "ctime"}},
		{"uid", "f1.txt", func(t *testing.T, p string) { must(t, os.Lchown(p, 4242, -1)) }, KindChanged, []string{"uid"}},
		{"gid", "f1.txt", func(t *testing.T, p string) { must(t, os.Lchown(p, -1, 4243)) }, KindChanged, []string{"gid"}},
		{"mtime", "f1.txt", func(t *testing.T, p string) {
			must(t, os.Chtimes(p, time.Time{}, time.Unix(1e9, 0)))
		}, KindChanged, []string{"mtime"}},
		{"nlink", "f1.txt", func(t *testing.T, p string) { must(t, os.Link(p, p+".hard")) }, KindChanged, []string{"nlink"}},
		{"inode", "f3.txt", func(t *testing.T, p string) {
			data, _ := os.ReadFile(p)
			writeFile(t, p+".new", string(data))
			must(t, os.Rename(p+".new", p))
		}, KindChanged, []string{"inode"}},
		{"xattr", "f1.txt", func(t *testing.T, p string) { must(t, unix.Setxattr(p, "user.parry", []byte("v"), 0)) }, KindChanged, []string{"xattrs"}},
		{"capability", "f1.txt", func(t *testing.T, p string) {
			// VFS_CAP_REVISION_2, cap_net_raw permitted+effective.
			capv2 := []byte{0x01, 0x00, 0x00, 0x02, 0x00, 0x20, 0x00, 0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}
			must(t, unix.Setxattr(p, "security.capability", capv2, 0))
		}, KindChanged, []string{"xattrs"}},
		{"symlink target", "link", func(t *testing.T, p string) {
			must(t, os.Remove(p))
			must(t, os.Symlink("f2.txt", p))
		}, KindChanged, []string{"target"}},
		{"type", "f4.txt", func(t *testing.T, p string) {
			must(t, os.Remove(p))
			must(t, os.Mkdir(p, 0o755))
		}, KindChanged, []string{"type"}},
		{"dir mode", "sub", func(t *testing.T, p string) { must(t, os.Chmod(p, 0o700)) }, KindChanged, []string{"mode"}},
		{"removed", "sub/g1.conf", func(t *testing.T, p string) { must(t, os.Remove(p)) }, KindRemoved, nil},
		{"added", "new.txt", func(t *testing.T, p string) { writeFile(t, p, "new") }, KindAdded, nil},
		{"setuid", "f2.txt", func(t *testing.T, p string) { must(t, unix.Chmod(p, 0o4755)) }, KindChanged, []string{"mode"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := genTree(t)
			cfg := testConfig(dir)
			before := scanMap(t, cfg)
			p := filepath.Join(dir, c.path)
			c.mutate(t, p)
			fs := checker(t, nil).Compare(before, scanMap(t, cfg))
			f := findingFor(fs, p)
			if f == nil || f.Kind != c.kind {
				t.Fatalf("want %s finding for %s, got %v", c.kind, p, fs)
			}
			for _, a := range c.attrs {
				if !slices.ContainsFunc(f.Changes, func(ch Change) bool { return ch.Attr == a }) {
					t.Errorf("changes %v lack %s", f.Changes, a)
				}
			}
			if c.name == "setuid" && f.Severity != SevCritical {
				t.Errorf("gaining setuid has severity %s, want critical", f.Severity)
			}
			if c.name == "mode" && (f.Changes[0].Old != "0644" || f.Changes[0].New != "0600") {
				t.Errorf("mode change shown as %+v", f.Changes[0])
			}
		})
	}
}

func rewriteKeepTimes(t *testing.T, p, content string) {
	t.Helper()
	st, err := os.Stat(p)
	must(t, err)
	must(t, os.WriteFile(p, []byte(content), 0o644))
	must(t, os.Chtimes(p, st.ModTime(), st.ModTime()))
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func findingFor(fs []Finding, p string) *Finding {
	for i := range fs {
		if fs[i].Path == p {
			return &fs[i]
		}
	}
	return nil
}

func TestSymlinkLoopsAndEscapes(t *testing.T) {
	dir := genTree(t)
	outside := t.TempDir()
	writeFile(t, filepath.Join(outside, "secret"), "not ours")
	must(t, os.Symlink("b", filepath.Join(dir, "a")))
	must(t, os.Symlink("a", filepath.Join(dir, "b")))
	must(t, os.Symlink("..", filepath.Join(dir, "sub", "up")))
	must(t, os.Symlink(dir, filepath.Join(dir, "sub", "self")))
	must(t, os.Symlink(outside, filepath.Join(dir, "out")))
	ents := scanMap(t, testConfig(dir))
	for p := range ents {
		if !strings.HasPrefix(p, dir) {
			t.Errorf("scanner left the selection: %s", p)
		}
	}
	for _, l := range []string{"a", "b", "sub/up", "sub/self", "out"} {
		if e := ents[filepath.Join(dir, l)]; e.Type != TypeSymlink {
			t.Errorf("%s recorded as %v, want symlink", l, e.Type)
		}
	}
	if len(ents) != 18 {
		t.Errorf("scanned %d entries, want 18", len(ents))
	}
}

// TestUnreadableFile scans as an unprivileged user (the test binary run
// again as nobody), so that a 0600 root file really cannot be read.
func TestUnreadableFile(t *testing.T) {
	if os.Getenv("PARRY_INTEGRITY_HELPER") == "scan" {
		ents := scanMap(t, testConfig(os.Getenv("PARRY_INTEGRITY_DIR")))
		must(t, json.NewEncoder(os.Stdout).Encode(ents))
		return
	}
	requireRoot(t)
	dir, err := os.MkdirTemp("", "parry-unreadable-")
	must(t, err)
	t.Cleanup(func() { os.RemoveAll(dir) })
	must(t, os.Chmod(dir, 0o755))
	writeFile(t, filepath.Join(dir, "open"), "anyone")
	writeFile(t, filepath.Join(dir, "closed"), "root only")
	must(t, os.Chmod(filepath.Join(dir, "closed"), 0o600))
	must(t, os.Mkdir(filepath.Join(dir, "locked"), 0o700))
	writeFile(t, filepath.Join(dir, "locked", "inside"), "x")

	// The test binary lives in a private directory: run a copy nobody can reach.
	bindir, err := os.MkdirTemp("", "parry-helper-")
	must(t, err)
	t.Cleanup(func() { os.RemoveAll(bindir) })
	must(t, os.Chmod(bindir, 0o755))
	exe, err := os.ReadFile(os.Args[0])
	must(t, err)
	bin := filepath.Join(bindir, "integrity.test")
	must(t, os.WriteFile(bin, exe, 0o755))
	cmd := exec.Command(bin, "-test.run=^TestUnreadableFile$")
	cmd.Env = append(os.Environ(), "PARRY_INTEGRITY_HELPER=scan", "PARRY_INTEGRITY_DIR="+dir)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("helper: %v\n%s", err, out)
	}
	var ents map[string]Entry
	line, _, _ := bytes.Cut(out, []byte("\n"))
	must(t, json.Unmarshal(line, &ents))
	if e := ents[filepath.Join(dir, "closed")]; !strings.Contains(e.Err, "permission denied") || e.Type != TypeFile {
		t.Errorf("unreadable file recorded as %+v", e)
	}
	if e := ents[filepath.Join(dir, "locked")]; !strings.Contains(e.Err, "permission denied") {
		t.Errorf("unreadable directory recorded as %+v", e)
	}
	if e := ents[filepath.Join(dir, "open")]; e.Err != "" || e.HashHex() == "" {
		t.Errorf("readable file recorded as %+v", e)
	}
	fs := checker(t, nil).Compare(ents, ents)
	if f := findingFor(fs, filepath.Join(dir, "closed")); f == nil || f.Kind != KindUnreadable {
		t.Errorf("no unreadable finding: %v", fs)
	}
}

func TestBaselineRoundTripAndTampering(t *testing.T) {
	dir := genTree(t)
	state := t.TempDir()
	ents := scanMap(t, testConfig(dir))
	b := &Baseline{Algo: HashSHA256, Created: time.Unix(1700000000, 0).UTC(), Entries: ents}
	digest, err := SaveBaseline(state, b)
	must(t, err)
	got, d2, err := LoadBaseline(state, digest)
	must(t, err)
	if d2 != digest || len(got.Entries) != len(ents) || !got.Created.Equal(b.Created) {
		t.Fatalf("round trip: %s %d", d2, len(got.Entries))
	}
	for p, e := range ents {
		if got.Entries[p] != e {
			t.Fatalf("%s: %+v != %+v", p, got.Entries[p], e)
		}
	}
	if _, _, err := LoadBaseline(state, "sha256:00"); !errors.Is(err, ErrBaselineTampered) {
		t.Fatalf("audit-chain digest mismatch: %v", err)
	}
	// Flip one byte of the baseline: refused.
	file := filepath.Join(state, BaselineFile)
	data, _ := os.ReadFile(file)
	data[len(data)/2] ^= 1
	must(t, os.WriteFile(file, data, 0o600))
	if b, _, err := LoadBaseline(state, ""); !errors.Is(err, ErrBaselineTampered) || b != nil {
		t.Fatalf("tampered baseline: %v", err)
	}
	// Rewrite the recorded digest to match: still refused against the
	// digest from the audit chain.
	must(t, os.WriteFile(filepath.Join(state, BaselineDigest), []byte(Digest(data)+"\n"), 0o600))
	if _, _, err := LoadBaseline(state, digest); !errors.Is(err, ErrBaselineTampered) {
		t.Fatalf("consistent rewrite accepted: %v", err)
	}
	must(t, os.Remove(filepath.Join(state, BaselineDigest)))
	if _, _, err := LoadBaseline(state, ""); !errors.Is(err, ErrBaselineTampered) {
		t.Fatalf("missing digest: %v", err)
	}
	if _, _, err := LoadBaseline(t.TempDir(), ""); !errors.Is(err, ErrNoBaseline) {
		t.Fatalf("no baseline: %v", err)
	}
}

func TestRuleRemediation(t *testing.T) {
	requireRoot(t)
	dir := genTree(t)
	p := filepath.Join(dir, "sub", "g0.conf")
	must(t, os.Lchown(p, 4242, 0)) // before chmod: chown clears setuid
	must(t, unix.Chmod(p, 0o4777))
	q := filepath.Join(dir, "sub", "g1.conf")
	must(t, unix.Chmod(q, 0o4757))
	rules := []Rule{
		{Path: dir + "/sub/g0.*", ModeMax: "0640", Owner: "root", Remediate: true},
		{Path: dir + "/**", Deny: []string{"world_writable", "setuid"}},
	}
	ents := scanMap(t, testConfig(dir))
	fs := checker(t, rules).Compare(ents, ents)
	var perm []Finding
	for _, f := range fs {
		if f.Kind == KindPermission {
			perm = append(perm, f)
		}
	}
	// The first rule puts g0 back, so the second rule sees it clean.
	if len(perm) != 2 || perm[0].Path != p || perm[1].Path != q {
		t.Fatalf("permission findings: %v", fs)
	}
	if !strings.Contains(perm[0].Remediation, "mode 4777 → 0640") || !strings.Contains(perm[0].Remediation, "owner 4242 → 0") {
		t.Errorf("remediation recorded as %q", perm[0].Remediation)
	}
	if perm[1].Remediation != "" || !strings.Contains(perm[1].Detail, "world_writable") || !strings.Contains(perm[1].Detail, "setuid") {
		t.Errorf("second rule: %+v", perm[1])
	}
	var st unix.Stat_t
	must(t, unix.Lstat(p, &st))
	if st.Mode&0o7777 != 0o640 || st.Uid != 0 {
		t.Fatalf("after remediation: mode %o uid %d", st.Mode&0o7777, st.Uid)
	}
	// Checked again: only the unremediated file.
	must(t, unix.Chmod(q, 0o644))
	ents = scanMap(t, testConfig(dir))
	for _, f := range checker(t, rules).Compare(ents, ents) {
		t.Errorf("after remediation: %v", f)
	}
}

func TestDpkgAwareness(t *testing.T) {
	root := t.TempDir()
	bin := filepath.Join(root, "usr/bin")
	writeFile(t, filepath.Join(bin, "tool"), "version 1\n")
	writeFile(t, filepath.Join(bin, "other"), "original\n")
	cfg := testConfig(bin)
	cfg.PackageManager, cfg.PackageRoot = "dpkg", root
	before := scanMap(t, cfg)

	// The package is upgraded: new content, and dpkg records its md5.
	writeFile(t, filepath.Join(bin, "tool"), "version 2\n")
	writeFile(t, filepath.Join(bin, "other"), "tampered\n")
	writeFile(t, filepath.Join(bin, "newtool"), "brand new\n")
	sum := func(s string) string { h := md5.Sum([]byte(s)); return hex.EncodeToString(h[:]) }
	writeFile(t, filepath.Join(root, "var/lib/dpkg/info/tool:amd64.md5sums"),
		sum("version 2\n")+"  usr/bin/tool\n"+sum("brand new\n")+"  usr/bin/newtool\n")
	writeFile(t, filepath.Join(root, "var/lib/dpkg/info/other.md5sums"), sum("original\n")+"  usr/bin/other\n")

	c := checker(t, nil)
	c.Dpkg = NewDpkg(root, NewSelection(cfg.WithDefaults()))
	fs := c.Compare(before, scanMap(t, cfg))
	want := map[string][2]string{
		"tool": {KindPackage, SevLow}, "newtool": {KindPackage, SevLow}, "other": {KindChanged, SevHigh},
	}
	for name, w := range want {
		f := findingFor(fs, filepath.Join(bin, name))
		if f == nil || f.Kind != w[0] || f.Severity != w[1] {
			t.Errorf("%s: got %+v, want %v", name, f, w)
		}
	}
	if f := findingFor(fs, filepath.Join(bin, "tool")); f != nil && f.Package != "tool:amd64" {
		t.Errorf("package named %q", f.Package)
	}
}

func TestMonitorBaselineCheckAccept(t *testing.T) {
	dir := genTree(t)
	var reported []Finding
	m, err := NewMonitor(testConfig(dir), Options{StateDir: t.TempDir(), Report: func(f Finding) { reported = append(reported, f) }})
	must(t, err)
	ctx := context.Background()
	res, err := m.Baseline(ctx)
	must(t, err)
	if res.Entries != 13 || !strings.HasPrefix(res.Digest, "sha256:") {
		t.Fatalf("baseline: %+v", res)
	}
	fs, err := m.Check(ctx)
	must(t, err)
	if len(fs) != 0 {
		t.Fatalf("clean check: %v", fs)
	}
	p := filepath.Join(dir, "f0.txt")
	writeFile(t, p, "changed")
	fs, err = m.Check(ctx)
	must(t, err)
	if len(fs) != 1 || fs[0].Path != p || len(reported) != 1 {
		t.Fatalf("check after change: %v (reported %v)", fs, reported)
	}
	if fs, _ = m.Check(ctx); len(fs) != 1 || len(reported) != 1 {
		t.Fatalf("second check re-reported: %v", reported)
	}
	d2, err := m.Accept(ctx, []string{p})
	must(t, err)
	if d2 == res.Digest {
		t.Fatal("accept kept the digest")
	}
	if fs, _ = m.Check(ctx); len(fs) != 0 {
		t.Fatalf("after accept: %v", fs)
	}
	if _, err := m.Accept(ctx, []string{"/nonexistent/elsewhere"}); err == nil {
		t.Fatal("accepted a path outside the selection")
	}
	// A fresh monitor loads the accepted baseline with the new digest.
	m2, err := NewMonitor(testConfig(dir), Options{StateDir: m.opt.StateDir, WantDigest: d2})
	must(t, err)
	if _, err := m2.Load(); err != nil {
		t.Fatal(err)
	}
}

// A baseline recorded for more paths than are configured now (the admin
// narrowed integrity.paths or added an exclude) reports nothing for the
// paths that left the selection: they were not removed.
func TestCheckIgnoresBaselineEntriesOutsideSelection(t *testing.T) {
	root := t.TempDir()
	keep, drop := filepath.Join(root, "keep"), filepath.Join(root, "drop")
	writeFile(t, filepath.Join(keep, "a"), "a")
	writeFile(t, filepath.Join(drop, "b"), "b")
	writeFile(t, filepath.Join(keep, "c.swp"), "c")
	state := t.TempDir()
	wide := testConfig(keep)
	wide.Paths = append(wide.Paths, PathSpec{Path: drop})
	m, err := NewMonitor(wide, Options{StateDir: state})
	must(t, err)
	_, err = m.Baseline(context.Background())
	must(t, err)

	narrow := testConfig(keep)
	narrow.Exclude = []string{"*.swp"}
	m2, err := NewMonitor(narrow, Options{StateDir: state})
	must(t, err)
	_, err = m2.Load()
	must(t, err)
	fs, err := m2.Check(context.Background())
	must(t, err)
	if len(fs) != 0 {
		t.Fatalf("narrowed selection: want no findings, got %v", fs)
	}
	// A file removed inside the selection is still reported.
	must(t, os.Remove(filepath.Join(keep, "a")))
	fs, err = m2.Check(context.Background())
	must(t, err)
	if f := findingFor(fs, filepath.Join(keep, "a")); f == nil || f.Kind != KindRemoved {
		t.Fatalf("removed file inside the selection: want a removed finding, got %v", fs)
	}
}
