package integrity

import (
	"context"
	"encoding/binary"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/parryhq/parry/test/netns"
)

// chattrDir is a directory on a file system with inode flags (ext4 or
// xfs under /var/tmp, not tmpfs), with chattr present and allowed; the
// test skips with the reason otherwise. Cleanup clears +i and +a on
// everything below it before removing it.
func chattrDir(t *testing.T) string {
	t.Helper()
	requireRoot(t)
	if _, err := exec.LookPath("chattr"); err != nil {
		t.Skipf("chattr not installed: %v", err)
	}
	dir, err := os.MkdirTemp("/var/tmp", "parry-flags-")
	if err != nil {
		t.Skipf("no directory under /var/tmp: %v", err)
	}
	t.Cleanup(func() {
		_ = exec.Command("chattr", "-R", "-i", "-a", dir).Run()
		os.RemoveAll(dir)
	})
	probe := filepath.Join(dir, "probe")
	writeFile(t, probe, "p")
	if out, err := exec.Command("chattr", "+i", probe).CombinedOutput(); err != nil {
		t.Skipf("chattr +i not supported on %s: %v: %s", dir, err, out)
	}
	must(t, exec.Command("chattr", "-i", probe).Run())
	must(t, os.Remove(probe))
	return dir
}

func chattr(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command("chattr", args...).CombinedOutput(); err != nil {
		t.Fatalf("chattr %v: %v: %s", args, err, out)
	}
}

func flagChange(f *Finding) *Change {
	if f == nil {
		return nil
	}
	for i := range f.Changes {
		if f.Changes[i].Attr == "flags" {
			return &f.Changes[i]
		}
	}
	return nil
}

// TestFlagsSetAndCleared: chattr +i on a file, +a on a directory and -i
// again are findings that say so in words; the flags survive the baseline.
func TestFlagsSetAndCleared(t *testing.T) {
	dir := chattrDir(t)
	file, sub := filepath.Join(dir, "sshd_config"), filepath.Join(dir, "log")
	writeFile(t, file, "PermitRootLogin no\n")
	must(t, os.Mkdir(sub, 0o755))
	cfg := testConfig(dir)
	base := scanMap(t, cfg)
	if base[file].Flags != 0 {
		t.Fatalf("flags of a fresh file: %q", FlagsString(base[file].Flags))
	}

	chattr(t, "+i", file)
	chattr(t, "+a", sub)
	cur := scanMap(t, cfg)
	fs := checker(t, nil).Compare(base, cur)
	f := findingFor(fs, file)
	if c := flagChange(f); c == nil || c.Old != "" || c.New != "i" || f.Severity != SevHigh || !strings.Contains(f.Detail, "immutable flag set") {
		t.Fatalf("+i: finding %+v", f)
	}
	if f := findingFor(fs, sub); f == nil || !strings.Contains(f.Detail, "append-only flag set") {
		t.Fatalf("+a on a directory: finding %+v", f)
	}

	// Recorded in the baseline: +i is the normal state now, clearing it is a finding.
	b := &Baseline{Algo: HashSHA256, Created: time.Now(), Entries: cur}
	loaded, err := DecodeBaseline(b.Encode())
	must(t, err)
	if loaded.Entries[file].Flags != cur[file].Flags || loaded.Entries[sub].Flags != cur[sub].Flags {
		t.Fatalf("flags lost in the baseline: %x %x", loaded.Entries[file].Flags, loaded.Entries[sub].Flags)
	}
	chattr(t, "-i", file)
	fs = checker(t, nil).Compare(loaded.Entries, scanMap(t, cfg))
	f = findingFor(fs, file)
	if c := flagChange(f); c == nil || c.Old != "i" || c.New != "" || !strings.Contains(f.Detail, "immutable flag cleared") {
		t.Fatalf("-i: finding %+v", f)
	}
	if findingFor(fs, sub) != nil {
		t.Errorf("unchanged +a directory reported: %+v", findingFor(fs, sub))
	}
}

// TestWatcherAndChattr: the kernel sends no inotify event for a flags
// change (FS_IOC_SETFLAGS; checked on 6.18), so chattr alone is found by
// the next check (scheduled or `parry integrity check`), and at once by the
// watcher when the file is touched in any other way: an attacker who
// clears +i to edit a file is reported with both.
func TestWatcherAndChattr(t *testing.T) {
	dir := chattrDir(t)
	keys, conf := filepath.Join(dir, "authorized_keys"), filepath.Join(dir, "sudoers")
	writeFile(t, keys, "ssh-ed25519 AAAA admin\n")
	writeFile(t, conf, "root ALL=(ALL) ALL\n")
	chattr(t, "+i", keys) // the admin protects it before the baseline
	col := &collector{}
	m := startWatcher(t, testConfig(dir), col)

	chattr(t, "-i", keys)
	writeFile(t, keys, "ssh-ed25519 AAAA attacker\n")
	netns.Eventually(t, 5*time.Second, "edit finding with the flag cleared", func() bool {
		return col.has(func(f Finding) bool {
			return f.Path == keys && strings.Contains(f.Detail, "immutable flag cleared") && strings.Contains(f.Detail, "hash ")
		})
	})

	chattr(t, "+i", conf) // to persist: no event, the check finds it
	fs, err := m.Check(context.Background())
	must(t, err)
	if f := findingFor(fs, conf); f == nil || !strings.Contains(f.Detail, "immutable flag set") {
		t.Fatalf("check after chattr +i: %+v", fs)
	}
}

// A baseline written before flags were recorded (PARRYIB1) still loads,
// with flags 0.
func TestBaselineV1StillLoads(t *testing.T) {
	e := Entry{Type: TypeFile, Mode: 0o644, Size: 3, Mtime: 5, Ctime: 6, Inode: 7, Nlink: 1, Xattrs: "user.x=01"}
	v1 := []byte(baselineMagicV1)
	v1 = appendString(v1, HashSHA256)
	v1 = binary.AppendVarint(v1, 42)
	v1 = binary.AppendUvarint(v1, 1)
	v1 = binary.AppendUvarint(v1, 0)
	v1 = appendString(v1, "/etc/x")
	v1 = append(v1, byte(e.Type))
	for _, v := range []uint64{uint64(e.Mode), 0, 0, e.Nlink, uint64(e.Size), e.Inode} {
		v1 = binary.AppendUvarint(v1, v)
	}
	v1 = binary.AppendVarint(v1, e.Mtime)
	v1 = binary.AppendVarint(v1, e.Ctime)
	v1 = appendString(v1, "")
	v1 = appendString(v1, e.Xattrs)
	v1 = appendString(v1, "")
	v1 = append(v1, 0)
	b, err := DecodeBaseline(v1)
	must(t, err)
	if got := b.Entries["/etc/x"]; got != e {
		t.Fatalf("v1 entry %+v, want %+v", got, e)
	}
	e.Flags = 0x10
	again, err := DecodeBaseline((&Baseline{Algo: HashSHA256, Entries: map[string]Entry{"/etc/x": e}}).Encode())
	must(t, err)
	if again.Entries["/etc/x"] != e {
		t.Fatalf("v2 round trip %+v, want %+v", again.Entries["/etc/x"], e)
	}
}
