package integrity

import "strings"

// secretGlobs are files that hold secrets: their content is never kept in
// the copy store nor shown in a diff, whatever integrity.diff selects.
// Base-name patterns (no "/") match anywhere; the others match the whole
// path. A permission rule with `secret: true` or denying world_readable
// adds its path.
var secretGlobs = []string{
	"shadow", "shadow-", "gshadow", "gshadow-", "opasswd",
	"*.key", "*_key", "*.pem", "*.p12", "*.pfx", "*.jks", "*.keystore", "*.keytab", "*.kdbx",
	".env", ".env.*", "*.env", ".netrc", ".pgpass", ".my.cnf", "credentials", "*secret*", "*.secrets",
	"/etc/ssl/private/**", "/etc/NetworkManager/system-connections/**", "/etc/wpa_supplicant/**",
	"/etc/parry/**", "/root/.gnupg/**", "/etc/ssh/ssh_host_*",
}

// secrets decides which paths hold secrets.
type secrets struct{ globs []glob }

func newSecrets(rules []Rule) *secrets {
	s := &secrets{}
	for _, g := range secretGlobs {
		s.globs = append(s.globs, compileGlob(g))
	}
	for _, r := range rules {
		if r.Secret || denies(r, "world_readable") {
			s.globs = append(s.globs, compileGlob(r.Path))
		}
	}
	return s
}

func denies(r Rule, what string) bool {
	for _, d := range r.Deny {
		if d == what {
			return true
		}
	}
	return false
}

// secret reports whether the content of path must never be kept or shown.
// An ssh private key id_* is secret, its id_*.pub is not; every
// ssh_host_* file is (the .pub files are public, but nobody needs their
// diff).
func (s *secrets) secret(path string) bool {
	base := path[strings.LastIndexByte(path, '/')+1:]
	if strings.HasPrefix(base, "id_") && !strings.HasSuffix(base, ".pub") {
		return true
	}
	for _, g := range s.globs {
		if g.match(path) {
			return true
		}
	}
	return false
}
