// Package hostcheck audits the host's own security posture: sensitive files
// readable by others, sshd settings, TLS certificates close to expiry, and
// parry's own files and table. Each finding carries a severity and the fix.
// It only reads; it never changes anything.
package hostcheck

import (
	"fmt"
	"path/filepath"
	"time"

	"github.com/parryhq/parry/agent/api"
)

// Defaults for the zero values of Config.
const (
	DefaultCertWarn = 30 * 24 * time.Hour
	DefaultMaxFiles = 20000
	DefaultEnvDepth = 4
)

// Default locations, relative to Config.Root.
var (
	defaultKeyDirs   = []string{"/etc/ssl/private", "/etc/ssh", "/root/.ssh", "/home/*/.ssh", "/etc/letsencrypt"}
	defaultEnvDirs   = []string{"/srv", "/var/www", "/opt", "/home", "/root"}
	defaultCertPaths = []string{"/etc/letsencrypt/live", "/etc/ssl/private", "/etc/nginx", "/etc/apache2", "/etc/haproxy"}
	defaultShadow    = []string{"/etc/shadow", "/etc/gshadow"}
)

// Config is the `check:` section of parry.yaml. The zero value checks the
// usual places on a Debian/RHEL host.
type Config struct {
	// Root is prepended to every path below (default "/"); tests and
	// container images point it elsewhere.
	Root string `yaml:"root"`
	// KeyDirs are searched for private keys (PEM "PRIVATE KEY" blocks and
	// OpenSSH keys); globs allowed.
	KeyDirs []string `yaml:"key_dirs"`
	// EnvDirs are searched, EnvDepth levels deep, for .env files.
	EnvDirs  []string `yaml:"env_dirs"`
	EnvDepth int      `yaml:"env_depth"`
	// ShadowFiles must never be readable by others.
	ShadowFiles []string `yaml:"shadow_files"`
	// SSHDConfig is the sshd configuration (default /etc/ssh/sshd_config);
	// Include directives are followed.
	SSHDConfig string `yaml:"sshd_config"`
	// CertPaths are files or directories holding PEM certificates (.pem,
	// .crt, .cer); globs allowed.
	CertPaths []string `yaml:"cert_paths"`
	// CertWarn: certificates expiring within this are reported (default 720h).
	CertWarn api.Duration `yaml:"cert_warn"`
	// MaxFiles bounds the files looked at per search (default 20000).
	MaxFiles int `yaml:"max_files"`
}

// Validate reports the first invalid knob.
func (c Config) Validate() error {
	if c.Root != "" && !filepath.IsAbs(c.Root) {
		return fmt.Errorf("root: %q is not an absolute path", c.Root)
	}
	for _, list := range [][]string{c.KeyDirs, c.EnvDirs, c.ShadowFiles, c.CertPaths} {
		for _, p := range list {
			if !filepath.IsAbs(p) {
				return fmt.Errorf("path %q is not absolute", p)
			}
			if _, err := filepath.Match(p, ""); err != nil {
				return fmt.Errorf("bad pattern %q: %w", p, err)
			}
		}
	}
	switch {
	case c.SSHDConfig != "" && !filepath.IsAbs(c.SSHDConfig):
		return fmt.Errorf("sshd_config: %q is not absolute", c.SSHDConfig)
	case c.CertWarn < 0:
		return fmt.Errorf("cert_warn: negative")
	case c.MaxFiles < 0 || c.MaxFiles > 10_000_000:
		return fmt.Errorf("max_files: %d out of range", c.MaxFiles)
	case c.EnvDepth < 0 || c.EnvDepth > 32:
		return fmt.Errorf("env_depth: %d out of range 0..32", c.EnvDepth)
	}
	return nil
}

// WithDefaults returns c with zero values replaced by the defaults.
func (c Config) WithDefaults() Config {
	if c.Root == "" {
		c.Root = "/"
	}
	if c.KeyDirs == nil {
		c.KeyDirs = defaultKeyDirs
	}
	if c.EnvDirs == nil {
		c.EnvDirs = defaultEnvDirs
	}
	if c.EnvDepth == 0 {
		c.EnvDepth = DefaultEnvDepth
	}
	if c.ShadowFiles == nil {
		c.ShadowFiles = defaultShadow
	}
	if c.SSHDConfig == "" {
		c.SSHDConfig = "/etc/ssh/sshd_config"
	}
	if c.CertPaths == nil {
		c.CertPaths = defaultCertPaths
	}
	if c.CertWarn == 0 {
		c.CertWarn = api.Duration(DefaultCertWarn)
	}
	if c.MaxFiles == 0 {
		c.MaxFiles = DefaultMaxFiles
	}
	return c
}
