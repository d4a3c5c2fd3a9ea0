package integrity

import (
	"crypto/md5"
	"encoding/hex"
	"os"
	"path/filepath"
	"testing"
)

// TestDpkgAwarenessConffilesAndUsrMerge: a conffile whose new content is
// the one dpkg's status records (a package upgrade installed it) is a
// package update; so is a file dpkg lists as bin/tool where /bin is the
// /usr-merge alias of /usr/bin and the watcher sees /usr/bin/tool; a
// diverted file is explained at the path the diversion put it.
func TestDpkgAwarenessConffilesAndUsrMerge(t *testing.T) {
	root := t.TempDir()
	sum := func(s string) string { h := md5.Sum([]byte(s)); return hex.EncodeToString(h[:]) }
	etc, bin := filepath.Join(root, "etc"), filepath.Join(root, "usr/bin")
	writeFile(t, filepath.Join(etc, "app.conf"), "v1\n")
	writeFile(t, filepath.Join(bin, "tool"), "tool 1\n")
	writeFile(t, filepath.Join(bin, "wrapped.real"), "real 1\n")
	must(t, os.Symlink("usr/bin", filepath.Join(root, "bin")))
	cfg := Config{Paths: []PathSpec{{Path: etc}, {Path: bin}}, Rules: []Rule{}, PackageManager: "dpkg", PackageRoot: root, Workers: 2}
	before := scanMap(t, cfg)

	writeFile(t, filepath.Join(etc, "app.conf"), "v2\n")
	writeFile(t, filepath.Join(bin, "tool"), "tool 2\n")
	writeFile(t, filepath.Join(bin, "wrapped.real"), "real 2\n")
	writeFile(t, filepath.Join(root, "var/lib/dpkg/status"),
		"Package: app\nStatus: install ok installed\nArchitecture: all\nConffiles:\n /etc/app.conf "+sum("v2\n")+"\n\n")
	writeFile(t, filepath.Join(root, "var/lib/dpkg/info/app.md5sums"),
		sum("tool 2\n")+"  bin/tool\n"+sum("real 2\n")+"  usr/bin/wrapped\n")
	writeFile(t, filepath.Join(root, "var/lib/dpkg/diversions"), "/usr/bin/wrapped\n/usr/bin/wrapped.real\nwrapper\n")

	c := checker(t, nil)
	c.Dpkg = NewDpkg(root, NewSelection(cfg.WithDefaults()))
	fs := c.Compare(before, scanMap(t, cfg))
	for _, p := range []string{filepath.Join(etc, "app.conf"), filepath.Join(bin, "tool"), filepath.Join(bin, "wrapped.real")} {
		if f := findingFor(fs, p); f == nil || f.Kind != KindPackage || f.Package != "app" {
			t.Errorf("%s: %+v, want a package_update of app", p, f)
		}
	}
}
