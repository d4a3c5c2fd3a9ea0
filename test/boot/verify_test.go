package boot

import (
	"encoding/json"
	"errors"
	"os/exec"
	"slices"
	"strings"
)

// checkVerifyPackages: on the freshly installed system `parry integrity
// verify-packages` (no daemon involved) is clean; a replaced /usr/bin
// binary and a truncated library are found with their packages (exit 1),
// an edited conffile is only a note. Everything is put back afterwards.
func (c *container) checkVerifyPackages() {
	c.t.Helper()
	if out, err := c.run("parry", "integrity", "verify-packages"); err != nil {
		c.t.Errorf("verify-packages on a fresh system: %v\n%s", err, tail(out, 40))
		return
	}
	// libsemanage2 (for passwd) is mapped by no running process, so
	// truncating it breaks nothing; the real file behind its .so.2 link.
	lib := strings.TrimSpace(c.must("sh", "-c", "readlink -f $(dpkg -L libsemanage2 | grep '/libsemanage\\.so\\.2$' | head -1)"))
	c.must("sh", "-c", "mkdir -p /root/orig && cp -a /usr/bin/tac "+lib+" /etc/login.defs /root/orig/ && "+
		"cp /usr/bin/true /usr/bin/tac && truncate -s 4096 "+lib+" && echo '# edited by the admin' >> /etc/login.defs")
	defer c.must("sh", "-c", "cp -a /root/orig/tac /usr/bin/tac && cp -a /root/orig/$(basename "+lib+") "+lib+" && cp -a /root/orig/login.defs /etc/login.defs")

	out, err := c.run("parry", "integrity", "verify-packages", "--json")
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 1 {
		c.t.Errorf("verify-packages after the changes: %v, want exit 1\n%s", err, tail(out, 40))
		return
	}
	var res struct {
		Clean    bool `json:"clean"`
		Findings []struct {
			Kind     string   `json:"kind"`
			Severity string   `json:"severity"`
			Path     string   `json:"path"`
			Packages []string `json:"packages"`
			Conffile bool     `json:"conffile"`
		} `json:"findings"`
	}
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		c.t.Errorf("verify-packages --json: %v\n%s", err, tail(out, 40))
		return
	}
	var got []string
	for _, f := range res.Findings {
		got = append(got, f.Kind+" "+f.Severity+" "+f.Path+" ("+strings.Join(f.Packages, ",")+")")
	}
	for _, want := range []string{
		"changed high /usr/bin/tac (coreutils)",
		"changed high " + lib + " (libsemanage2:amd64)", // Multi-Arch: same
		"changed low /etc/login.defs (login)",
	} {
		if !slices.Contains(got, want) {
			c.t.Errorf("verify-packages: no %q in %q", want, got)
		}
	}
	if len(got) != 3 || res.Clean {
		c.t.Errorf("verify-packages: clean %v, findings %q: want exactly the three changes", res.Clean, got)
	}
	c.t.Logf("verify-packages found: %q", got)
}
