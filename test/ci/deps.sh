#!/bin/sh
# Installs the Debian packages parry's test suite needs: the kernel-facing tests
# (nftables, iproute2, ping, socat), the boot test (debootstrap,
# systemd-nspawn), the packaging checks (lintian, systemd-analyze) and the
# side-by-side benchmarks (aide, debsums), the HTML report in a browser (chromium) and
# the Prometheus rules and scrape (prometheus, promtool). Idempotent; runs apt-get update only when
# something is missing. Needs root.
set -eu
PKGS="nftables iproute2 iputils-ping socat netcat-openbsd procps psmisc kmod util-linux passwd debootstrap systemd systemd-container dbus lintian aide debsums git make ca-certificates python3 openssl chromium prometheus"
missing=""
# The ssh lab (test/sshlab) runs Debian's sshd with its own config inside a
# test namespace. No package may start or enable a service on the host while
# it installs: a policy-rc.d that exits 101 is in place for the install
# (unless the host already has one), and when this script is what installs
# openssh-server, the host's ssh.service is disabled and kept from ever
# starting (/etc/ssh/sshd_not_to_be_run, which Debian's unit and init script
# honour).
PKGS="$PKGS openssh-server openssh-client sshpass"
# fail2ban: test/response TestFail2banRoundTrip runs a private fail2ban-server
# (own config, socket, in-memory db) with the shipped action; the host's
# fail2ban.service is never started (the policy-rc.d guard below).
PKGS="$PKGS fail2ban"
installed() { dpkg-query -W -f='${Status}\n' "$1" 2>/dev/null | grep -q "install ok installed"; }
for p in $PKGS; do
	installed "$p" || missing="$missing $p"
done
[ -n "$missing" ] || exit 0

echo "installing:$missing"
new_sshd=0
installed openssh-server || new_sshd=1
guard=0
if [ ! -e /usr/sbin/policy-rc.d ]; then
	printf '#!/bin/sh\n# parry test/ci/deps.sh: no service starts during this install\nexit 101\n' >/usr/sbin/policy-rc.d
	chmod +x /usr/sbin/policy-rc.d
	guard=1
fi
cleanup() { [ "$guard" = 0 ] || rm -f /usr/sbin/policy-rc.d; }
trap cleanup EXIT
if [ "$new_sshd" = 1 ]; then
	# Set before the install: even a unit started by something else finds
	# the condition false.
	mkdir -p /etc/ssh
	touch /etc/ssh/sshd_not_to_be_run
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update
# shellcheck disable=SC2086
apt-get install -y --no-install-recommends -o DPkg::Lock::Timeout=300 $missing
if [ "$new_sshd" = 1 ] && command -v systemctl >/dev/null 2>&1; then
	# The package enables ssh.service for the next boot; undo that.
	systemctl disable --quiet ssh.service ssh.socket 2>/dev/null || true
fi
