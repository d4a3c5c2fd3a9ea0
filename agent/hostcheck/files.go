package hostcheck

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// maxHead is how much of a file is read to recognise a key or certificate.
const maxHead = 1 << 20

// under joins a configured absolute path (maybe a glob) onto Root and
// expands the glob.
func (r *run) under(p string) []string {
	full := filepath.Join(r.cfg.Root, p)
	if !strings.ContainsAny(p, "*?[") {
		return []string{full}
	}
	m, _ := filepath.Glob(full)
	return m
}

// walk visits regular files (following a symlink only when it names a
// file) below each configured path, at most maxDepth levels deep and at
// most MaxFiles in total; a truncated search becomes an info finding.
func (r *run) walk(ctx context.Context, paths []string, maxDepth int, what string, visit func(path string, fi fs.FileInfo)) {
	n := 0
	for _, p := range paths {
		for _, top := range r.under(p) {
			base := strings.Count(filepath.Clean(top), string(filepath.Separator))
			err := filepath.WalkDir(top, func(path string, d fs.DirEntry, err error) error {
				if err != nil {
					if errors.Is(err, fs.ErrNotExist) || errors.Is(err, fs.ErrPermission) {
						return nil
					}
					return nil
				}
				if ctx.Err() != nil {
					return ctx.Err()
				}
				if d.IsDir() {
					if maxDepth > 0 && strings.Count(path, string(filepath.Separator))-base >= maxDepth {
						return fs.SkipDir
					}
					return nil
				}
				if n++; n > r.cfg.MaxFiles {
					return fs.SkipAll
				}
				fi, err := os.Stat(path) // follows a symlink to its file: the target's mode is what counts
				if err != nil || !fi.Mode().IsRegular() {
					return nil
				}
				visit(path, fi)
				return nil
			})
			if err != nil {
				r.add(Finding{ID: "check-incomplete", Severity: SevInfo, Path: top,
					Message: fmt.Sprintf("%s search stopped: %v", what, err), Fix: "run the check again with more time"})
			}
		}
	}
	if n > r.cfg.MaxFiles {
		r.add(Finding{ID: "check-truncated", Severity: SevInfo, Message: fmt.Sprintf("%s search stopped after %d files", what, r.cfg.MaxFiles),
			Fix: "raise check.max_files or narrow the configured directories"})
	}
}

func head(path string, fi fs.FileInfo) []byte {
	if fi.Size() > maxHead {
		return nil
	}
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	b, _ := io.ReadAll(io.LimitReader(f, maxHead))
	return b
}

func othersRead(fi fs.FileInfo) bool  { return fi.Mode().Perm()&0o004 != 0 }
func othersWrite(fi fs.FileInfo) bool { return fi.Mode().Perm()&0o002 != 0 }

func (r *run) shadow(ctx context.Context) {
	for _, p := range r.cfg.ShadowFiles {
		for _, path := range r.under(p) {
			fi, err := os.Stat(path)
			if err != nil {
				continue
			}
			if othersRead(fi) || othersWrite(fi) {
				r.add(Finding{ID: "shadow-readable", Severity: SevCritical, Path: path,
					Message: fmt.Sprintf("password hashes are accessible to every user (mode %04o)", fi.Mode().Perm()),
					Fix:     fmt.Sprintf("chmod 0640 %s && chown root:shadow %s", path, path)})
			}
		}
	}
}

func isPrivateKey(b []byte) bool {
	return bytes.Contains(b, []byte("PRIVATE KEY-----"))
}

func (r *run) keys(ctx context.Context) {
	r.walk(ctx, r.cfg.KeyDirs, 0, "private key", func(path string, fi fs.FileInfo) {
		if fi.Mode().Perm()&0o077 == 0 {
			return
		}
		if !isPrivateKey(head(path, fi)) {
			return
		}
		switch {
		case othersRead(fi) || othersWrite(fi):
			r.add(Finding{ID: "key-readable", Severity: SevHigh, Path: path,
				Message: fmt.Sprintf("private key readable by every user (mode %04o)", fi.Mode().Perm()),
				Fix:     fmt.Sprintf("chmod 0600 %s, and replace the key if untrusted users had access", path)})
		case fi.Mode().Perm()&0o020 != 0:
			r.add(Finding{ID: "key-group-writable", Severity: SevMedium, Path: path,
				Message: fmt.Sprintf("private key writable by its group (mode %04o)", fi.Mode().Perm()),
				Fix:     fmt.Sprintf("chmod 0640 %s", path)})
		}
	})
}

func isEnvFile(name string) bool {
	if name != ".env" && !strings.HasPrefix(name, ".env.") {
		return false
	}
	for _, s := range []string{".example", ".sample", ".dist", ".template"} {
		if strings.HasSuffix(name, s) {
			return false
		}
	}
	return true
}

func (r *run) envFiles(ctx context.Context) {
	r.walk(ctx, r.cfg.EnvDirs, r.cfg.EnvDepth, ".env", func(path string, fi fs.FileInfo) {
		if !isEnvFile(filepath.Base(path)) || !othersRead(fi) {
			return
		}
		r.add(Finding{ID: "env-readable", Severity: SevMedium, Path: path,
			Message: fmt.Sprintf("environment file (usually secrets) readable by every user (mode %04o)", fi.Mode().Perm()),
			Fix:     fmt.Sprintf("chmod 0640 %s and give its group to the service that reads it", path)})
	})
}
