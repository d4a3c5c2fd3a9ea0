package dpkg

import (
	"context"
	"crypto/md5"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// fakeRoot is a system root in a temp dir: files, and dpkg's database
// describing them.
type fakeRoot struct {
	t       *testing.T
	dir     string
	status  strings.Builder
	md5sums map[string]*strings.Builder
}

func newFakeRoot(t *testing.T) *fakeRoot {
	t.Helper()
	r := &fakeRoot{t: t, dir: t.TempDir(), md5sums: map[string]*strings.Builder{}}
	if err := os.MkdirAll(filepath.Join(r.dir, "var/lib/dpkg/info"), 0o755); err != nil {
		t.Fatal(err)
	}
	return r
}

func md5hex(s string) string {
	h := md5.Sum([]byte(s))
	return hex.EncodeToString(h[:])
}

// write puts content at rel (creating directories).
func (r *fakeRoot) write(rel, content string) {
	r.t.Helper()
	p := filepath.Join(r.dir, rel)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		r.t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		r.t.Fatal(err)
	}
}

// file installs rel with content for pkg, listed in pkg's md5sums as
// listed (rel when "").
func (r *fakeRoot) file(pkg, rel, listed, content string) {
	r.write(rel, content)
	r.list(pkg, listed, content)
	if listed == "" {
		r.list(pkg, rel, content)
	}
}

// list adds a line to pkg's md5sums without touching the file.
func (r *fakeRoot) list(pkg, listed, content string) {
	if listed == "" {
		return
	}
	b := r.md5sums[pkg]
	if b == nil {
		b = &strings.Builder{}
		r.md5sums[pkg] = b
	}
	fmt.Fprintf(b, "%s  %s\n", md5hex(content), listed)
}

// pkg adds a status stanza; conffiles are "path content" pairs.
func (r *fakeRoot) pkg(name string, conffiles ...string) {
	fmt.Fprintf(&r.status, "Package: %s\nStatus: install ok installed\nArchitecture: amd64\nDescription: a test package\n with a long description\n", name)
	if len(conffiles) > 0 {
		r.status.WriteString("Conffiles:\n")
		for i := 0; i+1 < len(conffiles); i += 2 {
			r.write(conffiles[i], conffiles[i+1])
			fmt.Fprintf(&r.status, " /%s %s\n", conffiles[i], md5hex(conffiles[i+1]))
		}
	}
	r.status.WriteString("\n")
}

func (r *fakeRoot) save() {
	r.t.Helper()
	must := func(err error) {
		if err != nil {
			r.t.Fatal(err)
		}
	}
	must(os.WriteFile(filepath.Join(r.dir, "var/lib/dpkg/status"), []byte(r.status.String()), 0o644))
	for pkg, b := range r.md5sums {
		must(os.WriteFile(filepath.Join(r.dir, "var/lib/dpkg/info", pkg+".md5sums"), []byte(b.String()), 0o644))
	}
}

func (r *fakeRoot) verify(pkgs ...string) *Result {
	r.t.Helper()
	r.save()
	res, err := Verify(context.Background(), Options{Root: r.dir, Packages: pkgs})
	if err != nil {
		r.t.Fatalf("Verify: %v", err)
	}
	return res
}

// lines renders findings as sorted "kind severity path (pkgs) detail" lines,
// paths relative to the fake root.
func (r *fakeRoot) lines(res *Result) []string {
	out := []string{}
	for _, f := range res.Findings {
		l := fmt.Sprintf("%s %s %s (%s)", f.Kind, f.Severity, strings.TrimPrefix(f.Path, r.dir), strings.Join(f.Packages, ","))
		if f.Listed != "" {
			l += " listed " + f.Listed
		}
		if f.Detail != "" {
			l += ": " + strings.ReplaceAll(f.Detail, r.dir, "ROOT")
		}
		out = append(out, l)
	}
	sort.Strings(out)
	return out
}

// base is a small system: two packages, one conffile, a /usr merge.
func base(t *testing.T) *fakeRoot {
	r := newFakeRoot(t)
	r.pkg("coreutils")
	r.pkg("openssh-server", "etc/ssh/sshd_config", "PasswordAuthentication no\n")
	r.file("coreutils", "usr/bin/ls", "bin/ls", "ls binary")
	r.file("coreutils", "usr/bin/cat", "", "cat binary")
	r.file("coreutils", "usr/lib/x86_64-linux-gnu/libcore.so.1", "", strings.Repeat("lib", 400000))
	r.file("openssh-server", "usr/sbin/sshd", "", "sshd binary")
	r.file("openssh-server", "usr/share/doc/openssh-server/README", "", "")
	if err := os.Symlink("usr/bin", filepath.Join(r.dir, "bin")); err != nil {
		t.Fatal(err)
	}
	return r
}

func TestVerifyClean(t *testing.T) {
	r := base(t)
	res := r.verify()
	if diff := cmp.Diff([]string{}, r.lines(res)); diff != "" {
		t.Errorf("findings (-want +got):\n%s", diff)
	}
	if !res.Clean || res.Packages != 2 || res.Files != 6 || res.Conffiles != 1 || res.Malformed != 0 {
		t.Errorf("result %+v: want clean, 2 packages, 6 files, 1 conffile, 0 malformed", res)
	}
	if want := int64(len("ls binary") + len("cat binary") + 1200000 + len("sshd binary") + len("PasswordAuthentication no\n")); res.Bytes != want {
		t.Errorf("bytes %d, want %d", res.Bytes, want)
	}
}

func TestVerifyFindings(t *testing.T) {
	r := base(t)
	r.write("usr/bin/cat", "cat binary, trojaned")                         // changed
	r.write("usr/lib/x86_64-linux-gnu/libcore.so.1", "lib")                // truncated
	os.Remove(filepath.Join(r.dir, "usr/share/doc/openssh-server/README")) // missing
	r.write("etc/ssh/sshd_config", "PasswordAuthentication yes\n")         // the admin's edit
	os.Remove(filepath.Join(r.dir, "usr/sbin/sshd"))                       // replaced by a symlink
	if err := os.Symlink("/tmp/evil", filepath.Join(r.dir, "usr/sbin/sshd")); err != nil {
		t.Fatal(err)
	}
	res := r.verify()
	want := []string{
		"changed high /usr/bin/cat (coreutils)",
		"changed high /usr/lib/x86_64-linux-gnu/libcore.so.1 (coreutils)",
		"changed low /etc/ssh/sshd_config (openssh-server)",
		"missing high /usr/share/doc/openssh-server/README (openssh-server)",
		"replaced high /usr/sbin/sshd (openssh-server): now a symlink to /tmp/evil",
	}
	sort.Strings(want)
	if diff := cmp.Diff(want, r.lines(res)); diff != "" {
		t.Errorf("findings (-want +got):\n%s", diff)
	}
	if res.Clean {
		t.Error("clean with changed package files")
	}
	for _, f := range res.Findings {
		if strings.HasSuffix(f.Path, "/usr/bin/cat") && (f.Actual != md5hex("cat binary, trojaned") || f.Expected[0] != md5hex("cat binary")) {
			t.Errorf("cat: actual %s expected %v", f.Actual, f.Expected)
		}
		if strings.HasSuffix(f.Path, "sshd_config") && !f.Conffile {
			t.Error("sshd_config not marked a conffile")
		}
	}
}

// An edited or removed conffile alone is a note: clean.
func TestVerifyConffileIsANote(t *testing.T) {
	r := base(t)
	r.write("etc/ssh/sshd_config", "Port 2222\n")
	res := r.verify()
	if !res.Clean || len(res.Findings) != 1 || res.Findings[0].Severity != SeverityLow || res.Findings[0].Kind != Changed {
		t.Fatalf("edited conffile: clean %v, findings %v", res.Clean, r.lines(res))
	}
	os.Remove(filepath.Join(r.dir, "etc/ssh/sshd_config"))
	if res = r.verify(); !res.Clean || len(res.Findings) != 1 || res.Findings[0].Kind != Missing {
		t.Fatalf("removed conffile: clean %v, findings %v", res.Clean, r.lines(res))
	}
}

// A directory on the path replaced by a symlink is reported, and nothing
// behind it is read.
func TestVerifyParentSymlinkNotFollowed(t *testing.T) {
	r := base(t)
	elsewhere := t.TempDir()
	os.WriteFile(filepath.Join(elsewhere, "README"), nil, 0o644) // what the symlink leads to matches dpkg's md5
	doc := filepath.Join(r.dir, "usr/share/doc/openssh-server")
	os.RemoveAll(doc)
	if err := os.Symlink(elsewhere, doc); err != nil {
		t.Fatal(err)
	}
	res := r.verify()
	want := []string{fmt.Sprintf("replaced high /usr/share/doc/openssh-server/README (openssh-server): /usr/share/doc/openssh-server is a symlink to %s", elsewhere)}
	if diff := cmp.Diff(want, r.lines(res)); diff != "" {
		t.Errorf("findings (-want +got):\n%s", diff)
	}
	os.Remove(doc)
	os.WriteFile(doc, nil, 0o644)
	want = []string{"replaced high /usr/share/doc/openssh-server/README (openssh-server): /usr/share/doc/openssh-server is a file, not a directory"}
	if diff := cmp.Diff(want, r.lines(r.verify())); diff != "" {
		t.Errorf("findings (-want +got):\n%s", diff)
	}
}

func TestVerifyReplacedByDirectoryAndFIFO(t *testing.T) {
	r := base(t)
	os.Remove(filepath.Join(r.dir, "usr/bin/cat"))
	os.Mkdir(filepath.Join(r.dir, "usr/bin/cat"), 0o755)
	if err := mkfifo(filepath.Join(r.dir, "usr/sbin/sshd")); err != nil {
		t.Fatal(err)
	}
	want := []string{
		"replaced high /usr/bin/cat (coreutils): now a directory",
		"replaced high /usr/sbin/sshd (openssh-server): now a fifo",
	}
	if diff := cmp.Diff(want, r.lines(r.verify())); diff != "" {
		t.Errorf("findings (-want +got):\n%s", diff)
	}
}

// A diverted file is checked where the diversion put it; the diverting
// package's own file stays at the original path.
func TestVerifyDiversion(t *testing.T) {
	r := base(t)
	r.pkg("libpq-dev")
	r.pkg("postgresql-common")
	r.file("libpq-dev", "usr/bin/pg_config.libpq-dev", "usr/bin/pg_config", "libpq's pg_config")
	r.file("postgresql-common", "usr/bin/pg_config", "", "the wrapper")
	// A local diversion (by the admin, ":") of a file listed as bin/... .
	r.pkg("dash")
	r.file("dash", "usr/bin/sh.distrib", "bin/sh", "dash")
	os.WriteFile(filepath.Join(r.dir, "var/lib/dpkg/diversions"), []byte(
		"/usr/bin/pg_config\n/usr/bin/pg_config.libpq-dev\npostgresql-common\n"+
			"/bin/sh\n/bin/sh.distrib\n:\n"), 0o644)
	res := r.verify()
	if diff := cmp.Diff([]string{}, r.lines(res)); diff != "" {
		t.Errorf("clean diverted files (-want +got):\n%s", diff)
	}
	r.write("usr/bin/pg_config.libpq-dev", "changed")
	want := []string{"changed high /usr/bin/pg_config.libpq-dev (libpq-dev) listed /usr/bin/pg_config"}
	if diff := cmp.Diff(want, r.lines(r.verify())); diff != "" {
		t.Errorf("findings (-want +got):\n%s", diff)
	}
}

// A path two packages list is one file: checked once, clean when it matches
// either sum, reported once with both packages when it matches neither.
func TestVerifySharedPath(t *testing.T) {
	r := base(t)
	// Multi-Arch: same, two architectures: lists libfoo1:amd64.md5sums and
	// libfoo1:i386.md5sums.
	for _, arch := range []string{"amd64", "i386"} {
		fmt.Fprintf(&r.status, "Package: libfoo1\nStatus: install ok installed\nMulti-Arch: same\nArchitecture: %s\n\n", arch)
	}
	r.file("libfoo1:amd64", "usr/share/doc/libfoo1/changelog", "", "same text")
	r.list("libfoo1:i386", "usr/share/doc/libfoo1/changelog", "same text")
	r.pkg("old")
	r.pkg("new")
	r.file("new", "usr/bin/tool", "", "new tool")
	r.list("old", "usr/bin/tool", "old tool") // taken over (Replaces:), the old list stays
	res := r.verify()
	if diff := cmp.Diff([]string{}, r.lines(res)); diff != "" {
		t.Errorf("findings (-want +got):\n%s", diff)
	}
	if res.Packages != 6 || res.Files != 8 {
		t.Errorf("%d packages, %d files checked, want 6 and 8 (shared paths once)", res.Packages, res.Files)
	}
	r.write("usr/bin/tool", "neither")
	want := []string{"changed high /usr/bin/tool (new,old)"}
	res = r.verify()
	if diff := cmp.Diff(want, r.lines(res)); diff != "" {
		t.Errorf("findings (-want +got):\n%s", diff)
	}
	if len(res.Findings) == 1 && len(res.Findings[0].Expected) != 2 {
		t.Errorf("expected sums %v, want both", res.Findings[0].Expected)
	}
}

// /usr merge: bin/ls (listed by one package) and usr/bin/ls (by another)
// are one file; /bin is not followed as a symlink elsewhere.
func TestVerifyUsrMergeAlias(t *testing.T) {
	r := base(t)
	r.pkg("ls-moved")
	r.list("ls-moved", "usr/bin/ls", "ls binary")
	res := r.verify()
	if diff := cmp.Diff([]string{}, r.lines(res)); diff != "" {
		t.Errorf("findings (-want +got):\n%s", diff)
	}
	if res.Files != 6 {
		t.Errorf("%d files, want 6: bin/ls and usr/bin/ls are one", res.Files)
	}
	r.write("usr/bin/ls", "trojan")
	want := []string{"changed high /usr/bin/ls (coreutils,ls-moved) listed /bin/ls"}
	if diff := cmp.Diff(want, r.lines(r.verify())); diff != "" {
		t.Errorf("findings (-want +got):\n%s", diff)
	}
	// A top-level symlink that is not a /usr-merge alias is not followed.
	os.Remove(filepath.Join(r.dir, "bin"))
	os.Symlink(filepath.Join(r.dir, "usr/bin"), filepath.Join(r.dir, "bin"))
	r.write("usr/bin/ls", "ls binary")
	want = []string{"replaced high /bin/ls (coreutils): /bin is a symlink to ROOT/usr/bin"}
	if diff := cmp.Diff(want, r.lines(r.verify())); diff != "" {
		t.Errorf("findings (-want +got):\n%s", diff)
	}
}

func TestVerifySomePackages(t *testing.T) {
	r := base(t)
	r.write("usr/bin/cat", "changed")
	res := r.verify("openssh-server")
	if !res.Clean || res.Packages != 1 || res.Files != 3 {
		t.Errorf("openssh-server only: %+v", res)
	}
	r.save()
	_, err := Verify(context.Background(), Options{Root: r.dir, Packages: []string{"nosuch"}})
	if !errors.Is(err, ErrUnknownPackage) {
		t.Errorf("unknown package: %v, want ErrUnknownPackage", err)
	}
	_, err = Verify(context.Background(), Options{Root: t.TempDir()})
	if !errors.Is(err, ErrNoDatabase) {
		t.Errorf("no database: %v, want ErrNoDatabase", err)
	}
}

// Hostile lists: paths leaving the root, overlong lines, bad sums, bad
// package names are ignored and counted; nothing outside the root is read.
func TestVerifyHostileLists(t *testing.T) {
	r := base(t)
	outside := filepath.Join(filepath.Dir(r.dir), "outside-"+filepath.Base(r.dir))
	os.WriteFile(outside, []byte("secret"), 0o600)
	t.Cleanup(func() { os.Remove(outside) })
	rel := "../" + filepath.Base(outside)
	b := r.md5sums["coreutils"]
	fmt.Fprintf(b, "%s  %s\n", md5hex("secret"), rel)
	fmt.Fprintf(b, "%s  usr/../../%s\n", md5hex("secret"), filepath.Base(outside))
	fmt.Fprintf(b, "%s  usr//bin/ls\n", md5hex("x"))
	fmt.Fprintf(b, "%s  %s\n", md5hex("x"), strings.Repeat("a/", 5000))
	fmt.Fprintf(b, "nothex0123456789abcdef0123456789  usr/bin/ls\n")
	fmt.Fprintf(b, "short\n")
	r.status.WriteString("Package: ../../etc\nStatus: install ok installed\n\n")
	r.status.WriteString("Package: x\nStatus: install ok installed\nDescription: " + strings.Repeat("y", MaxStatusLine+10) + "\n\n")
	res := r.verify()
	if diff := cmp.Diff([]string{}, r.lines(res)); diff != "" {
		t.Errorf("findings (-want +got):\n%s", diff)
	}
	if res.Malformed != 8 {
		t.Errorf("%d malformed lines, want 8", res.Malformed)
	}
	if res.Files != 6 {
		t.Errorf("%d files, want 6", res.Files)
	}
}

// Control characters in listed names reach the finding unchanged (the
// CLI escapes them); the file is found and checked like any other.
func TestVerifyControlCharactersInNames(t *testing.T) {
	r := base(t)
	name := "usr/share/x\x1b[2Jy\rz"
	r.file("coreutils", name, "", "odd")
	r.write(name, "changed")
	res := r.verify()
	if len(res.Findings) != 1 || res.Findings[0].Path != filepath.Join(r.dir, name) {
		t.Fatalf("findings %q", r.lines(res))
	}
}

// A list over MaxListSize is read up to the bound; the line cut there is
// not used (a cut path could name another file).
func TestReadLinesBound(t *testing.T) {
	defer func(n int) { maxListSize = n }(maxListSize)
	maxListSize = 1 << 20
	line := strings.Repeat("x", 99) + "\n"
	data := strings.Repeat(line, maxListSize/100+5)
	n := 0
	skipped, err := readLines(strings.NewReader(data), MaxPathLine, func(l []byte) {
		if len(l) != 99 {
			t.Fatalf("a cut line was used: %d bytes", len(l))
		}
		n++
	})
	if err != nil || skipped != 1 || n != maxListSize/100 {
		t.Errorf("read %d lines, skipped %d, err %v; want %d, 1, nil", n, skipped, err, maxListSize/100)
	}
}
