package hostcheck

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// maxIncludeDepth bounds Include recursion (sshd itself allows 16).
const maxIncludeDepth = 16

// sshdSettings reads the global section of sshd_config the way sshd does:
// the first value of a keyword wins, Include is expanded in place (relative
// names under /etc/ssh), and parsing of global settings stops at Match.
type sshdSettings struct {
	values map[string]string // lower-case keyword -> first value, lower case
	files  map[string]string // keyword -> file that set it
	root   string
	stop   bool
}

func (s *sshdSettings) parseFile(path string, depth int) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 4096), 64*1024)
	for sc.Scan() && !s.stop {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' {
			continue
		}
		key, val, _ := strings.Cut(strings.Replace(line, "=", " ", 1), " ")
		key, val = strings.ToLower(key), strings.TrimSpace(val)
		switch key {
		case "match":
			s.stop = true
		case "include":
			if depth >= maxIncludeDepth {
				return fmt.Errorf("%s: Include nested deeper than %d", path, maxIncludeDepth)
			}
			for _, pat := range strings.Fields(val) {
				s.include(pat, depth)
			}
		default:
			if _, ok := s.values[key]; !ok {
				s.values[key] = strings.ToLower(val)
				s.files[key] = path
			}
		}
	}
	return sc.Err()
}

func (s *sshdSettings) include(pat string, depth int) {
	if !filepath.IsAbs(pat) {
		pat = filepath.Join("/etc/ssh", pat)
	}
	matches, _ := filepath.Glob(filepath.Join(s.root, pat))
	slices.Sort(matches)
	for _, m := range matches {
		_ = s.parseFile(m, depth+1)
		if s.stop {
			return
		}
	}
}

func (r *run) sshd(ctx context.Context) {
	main := filepath.Join(r.cfg.Root, r.cfg.SSHDConfig)
	s := &sshdSettings{values: map[string]string{}, files: map[string]string{}, root: r.cfg.Root}
	if err := s.parseFile(main, 0); err != nil {
		if !os.IsNotExist(err) {
			r.add(Finding{ID: "ssh-config-unreadable", Severity: SevLow, Path: main,
				Message: fmt.Sprintf("cannot read sshd configuration: %v", err), Fix: "run parry check as root"})
		}
		return
	}
	if v := s.values["permitrootlogin"]; v == "yes" {
		r.add(Finding{ID: "ssh-permit-root-login", Severity: SevHigh, Path: s.files["permitrootlogin"],
			Message: "sshd lets root log in with a password (PermitRootLogin yes)",
			Fix:     "set PermitRootLogin prohibit-password (or no) and reload sshd: systemctl reload ssh"})
	}
	v, set := s.values["passwordauthentication"]
	if v == "yes" || !set {
		where := s.files["passwordauthentication"]
		msg := "sshd accepts passwords (PasswordAuthentication yes), so passwords can be guessed"
		if !set {
			where, msg = main, "sshd accepts passwords (PasswordAuthentication is not set; sshd's default is yes)"
		}
		r.add(Finding{ID: "ssh-password-auth", Severity: SevMedium, Path: where, Message: msg,
			Fix: "set PasswordAuthentication no once every admin has a key, then systemctl reload ssh"})
	}
}
