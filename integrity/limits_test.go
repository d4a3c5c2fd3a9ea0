package integrity

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// TestMaxHashSizeSparseFile: a file over max_hash_size (default 1 GiB) is
// recorded by its metadata only — a 5 GiB sparse file costs no reading —
// and a not_hashed finding says so; smaller files are hashed as before.
func TestMaxHashSizeSparseFile(t *testing.T) {
	dir := t.TempDir()
	big := filepath.Join(dir, "big.img")
	f, err := os.Create(big)
	must(t, err)
	must(t, f.Truncate(5<<30))
	must(t, f.Close())
	writeFile(t, filepath.Join(dir, "small"), "hashed")

	cfg := testConfig(dir)
	ents := scanMap(t, cfg)
	if e := ents[big]; e.Type != TypeFile || e.Size != 5<<30 || e.HashHex() != "" || e.Err != "" {
		t.Errorf("big file entry: %+v, want metadata only and no hash", e)
	}
	if ents[filepath.Join(dir, "small")].HashHex() == "" {
		t.Errorf("small file not hashed")
	}

	col := &collector{}
	m, err := NewMonitor(cfg, Options{StateDir: t.TempDir(), Report: col.report})
	must(t, err)
	_, err = m.Baseline(context.Background())
	must(t, err)
	fs := col.snapshot()
	nf := findingFor(fs, big)
	if nf == nil || nf.Kind != KindNotHashed || !strings.Contains(nf.Detail, "max_hash_size") {
		t.Fatalf("findings for the big file: %v", fs)
	}
	if f := findingFor(fs, filepath.Join(dir, "small")); f != nil {
		t.Errorf("finding for the small file: %v", f)
	}

	// A limit set lower hashes less; "0" lifts it.
	cfg.MaxHashSize = "4KiB"
	writeFile(t, filepath.Join(dir, "mid"), strings.Repeat("x", 8192))
	if e := scanMap(t, cfg)[filepath.Join(dir, "mid")]; e.HashHex() != "" {
		t.Errorf("8 KiB file hashed with max_hash_size 4KiB")
	}
	cfg.MaxHashSize = "0"
	cfg.Paths = []PathSpec{{Path: filepath.Join(dir, "mid")}}
	if e := scanMap(t, cfg)[filepath.Join(dir, "mid")]; e.HashHex() == "" {
		t.Errorf("8 KiB file not hashed with max_hash_size 0 (no limit)")
	}
	for _, bad := range []string{"-1", "big", "1TB3"} {
		c := testConfig(dir)
		c.MaxHashSize = bad
		if err := c.WithDefaults().Validate(); err == nil || !strings.Contains(err.Error(), "integrity.max_hash_size") {
			t.Errorf("max_hash_size %q: %v", bad, err)
		}
	}
}

// TestRemediationRefusesHardLink: a hard link in a watched tree to a file
// outside it (as /etc/shadow could be) must not make parry change that
// file's mode: remediation is refused, and the finding says why.
func TestRemediationRefusesHardLink(t *testing.T) {
	requireRoot(t)
	dir := t.TempDir()
	outside := filepath.Join(t.TempDir(), "shadow")
	writeFile(t, outside, "secret")
	must(t, os.Chmod(outside, 0o644))
	link := filepath.Join(dir, "innocent")
	must(t, os.Link(outside, link))
	rules := []Rule{{Path: dir + "/**", Deny: []string{"world_readable"}, Remediate: true}}
	ents := scanMap(t, testConfig(dir))
	fs := checker(t, rules).Compare(ents, ents)
	f := findingFor(fs, link)
	if f == nil || f.Kind != KindPermission || !strings.HasPrefix(f.Remediation, "refused: ") || !strings.Contains(f.Remediation, "2 hard links") {
		t.Fatalf("finding for the hard link: %+v", f)
	}
	var st unix.Stat_t
	must(t, unix.Stat(outside, &st))
	if st.Mode&0o7777 != 0o644 {
		t.Fatalf("the linked file's mode was changed to %04o", st.Mode&0o7777)
	}
	// With one link only, the same rule remediates.
	must(t, os.Remove(outside))
	ents = scanMap(t, testConfig(dir))
	if f := findingFor(checker(t, rules).Compare(ents, ents), link); f == nil || f.Remediation != "mode 0644 → 0640" {
		t.Fatalf("single link: %+v", f)
	}
}
