package hostcheck

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"math/big"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

var now = time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC)

func write(t *testing.T, root, rel string, data []byte, mode os.FileMode) string {
	t.Helper()
	p := filepath.Join(root, rel)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, data, mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, mode); err != nil { // umask
		t.Fatal(err)
	}
	return p
}

func keyPEM(t *testing.T) (*ecdsa.PrivateKey, []byte) {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	return k, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
}

func certPEM(t *testing.T, cn string, notAfter time.Time) []byte {
	t.Helper()
	k, _ := keyPEM(t)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: cn},
		NotBefore: notAfter.Add(-90 * 24 * time.Hour), NotAfter: notAfter, DNSNames: []string{cn}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

func TestCheckFindsProblems(t *testing.T) {
	root := t.TempDir()
	_, key := keyPEM(t)
	badKey := write(t, root, "etc/ssl/private/server.key", key, 0o644)
	write(t, root, "etc/ssl/private/fine.key", key, 0o600)
	write(t, root, "etc/ssl/private/public.pem", []byte("-----BEGIN PUBLIC KEY-----\n"), 0o644)
	expiring := write(t, root, "etc/letsencrypt/live/example.org/cert.pem", certPEM(t, "example.org", now.Add(10*24*time.Hour)), 0o644)
	expired := write(t, root, "etc/nginx/old.crt", certPEM(t, "old.example.org", now.Add(-time.Hour)), 0o644)
	write(t, root, "etc/nginx/good.crt", certPEM(t, "good.example.org", now.Add(90*24*time.Hour)), 0o644)
	shadow := write(t, root, "etc/shadow", []byte("root:*:1::::::\n"), 0o644)
	write(t, root, "etc/gshadow", []byte("root:*::\n"), 0o640)
	env := write(t, root, "srv/app/.env", []byte("DB_PASSWORD=x\n"), 0o644)
	write(t, root, "srv/app/.env.example", []byte("DB_PASSWORD=\n"), 0o644)
	write(t, root, "srv/other/.env", []byte("X=1\n"), 0o600)
	sshd := write(t, root, "etc/ssh/sshd_config", []byte(
		"# comment\nInclude /etc/ssh/sshd_config.d/*.conf\nPermitRootLogin yes\nPasswordAuthentication yes\nMatch User x\n  PermitRootLogin no\n"), 0o644)
	write(t, root, "etc/ssh/sshd_config.d/10-hardening.conf", []byte("PasswordAuthentication no\n"), 0o644)

	parry := t.TempDir()
	conf := write(t, parry, "parry.yaml", []byte("{}\n"), 0o666)
	state := filepath.Join(parry, "state")
	os.Mkdir(state, 0o700)

	c := &Checker{Config: Config{Root: root}, Now: func() time.Time { return now },
		ConfigPath: conf, StateDir: state, Table: "inet parrytest",
		TablePresent: func() (bool, error) { return false, nil }}
	rep := c.Run(t.Context())

	type got struct{ ID, Sev, Path string }
	var have []got
	for _, f := range rep.Findings {
		if f.Message == "" || f.Fix == "" {
			t.Errorf("finding %s without message or fix", f.ID)
		}
		have = append(have, got{f.ID, f.Severity.String(), f.Path})
	}
	want := []got{
		{"parry-table-missing", "critical", "inet parrytest"},
		{"shadow-readable", "critical", shadow},
		{"key-readable", "high", badKey},
		{"parry-config-writable", "high", conf},
		{"ssh-permit-root-login", "high", sshd},
		{"tls-cert-expired", "high", expired},
		{"env-readable", "medium", env},
		{"tls-cert-expiring", "medium", expiring},
	}
	if d := cmp.Diff(want, have); d != "" {
		t.Errorf("findings (-want +got):\n%s", d)
	}
	if rep.Exit != ExitCritical {
		t.Errorf("exit = %d, want %d", rep.Exit, ExitCritical)
	}
	b, _ := json.Marshal(rep)
	var back struct {
		Worst    string `json:"worst"`
		Findings []struct {
			Severity string `json:"severity"`
		} `json:"findings"`
	}
	if err := json.Unmarshal(b, &back); err != nil || back.Worst != "critical" || back.Findings[0].Severity != "critical" {
		t.Errorf("json: %s (%v)", b, err)
	}
}

func TestCheckCleanHost(t *testing.T) {
	root := t.TempDir()
	write(t, root, "etc/ssh/sshd_config", []byte("PermitRootLogin prohibit-password\nPasswordAuthentication no\n"), 0o644)
	write(t, root, "etc/shadow", []byte("root:*:1::::::\n"), 0o640)
	c := &Checker{Config: Config{Root: root}, Now: func() time.Time { return now },
		TablePresent: func() (bool, error) { return true, nil }}
	rep := c.Run(t.Context())
	if len(rep.Findings) != 0 || rep.Exit != ExitClean {
		t.Errorf("clean host: %+v", rep)
	}
	b, _ := json.Marshal(rep)
	var back Report
	if err := json.Unmarshal(b, &back); err != nil || back.Exit != ExitClean {
		t.Errorf("clean report does not round-trip: %s: %v", b, err)
	}
}

func TestCheckSSHDefaultPasswordAuthAndTableError(t *testing.T) {
	root := t.TempDir()
	write(t, root, "etc/ssh/sshd_config", []byte("Port 22\n"), 0o644)
	c := &Checker{Config: Config{Root: root}, Now: func() time.Time { return now },
		TablePresent: func() (bool, error) { return false, errors.New("netlink: permission denied") }}
	rep := c.Run(t.Context())
	ids := map[string]Severity{}
	for _, f := range rep.Findings {
		ids[f.ID] = f.Severity
	}
	if ids["ssh-password-auth"] != SevMedium || ids["parry-table-unknown"] != SevMedium || len(ids) != 2 {
		t.Errorf("findings: %+v", rep.Findings)
	}
	if rep.Exit != ExitMedium {
		t.Errorf("exit %d, want %d", rep.Exit, ExitMedium)
	}
}

func TestExitCodes(t *testing.T) {
	for sev, want := range map[Severity]int{SevInfo: 0, SevLow: 3, SevMedium: 4, SevHigh: 5, SevCritical: 6} {
		if got := ExitCode(sev, true); got != want {
			t.Errorf("ExitCode(%v) = %d, want %d", sev, got, want)
		}
	}
	if ExitCode(SevInfo, false) != 0 {
		t.Error("no findings must exit 0")
	}
}

func TestConfigValidate(t *testing.T) {
	for _, c := range []Config{{Root: "rel"}, {KeyDirs: []string{"etc"}}, {CertWarn: -1}, {EnvDepth: 99}, {CertPaths: []string{"/a/["}}} {
		if c.Validate() == nil {
			t.Errorf("%+v validated", c)
		}
	}
	if err := (Config{}).WithDefaults().Validate(); err != nil {
		t.Error(err)
	}
}

func TestMaxFilesBound(t *testing.T) {
	root := t.TempDir()
	for _, n := range []string{"a", "b", "c"} {
		write(t, root, "srv/"+n+"/.env", []byte("x"), 0o644)
	}
	c := &Checker{Config: Config{Root: root, MaxFiles: 2, KeyDirs: []string{}, CertPaths: []string{}}, Now: func() time.Time { return now }}
	rep := c.Run(t.Context())
	env, truncated := 0, false
	for _, f := range rep.Findings {
		env += map[bool]int{true: 1}[f.ID == "env-readable"]
		truncated = truncated || f.ID == "check-truncated"
	}
	if env != 2 || !truncated {
		t.Errorf("env findings %d (want 2), truncated %v: %+v", env, truncated, rep.Findings)
	}
}
