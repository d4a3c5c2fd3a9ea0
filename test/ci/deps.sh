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
for p in $PKGS; do
	dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
	echo "installing:$missing"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update
	# shellcheck disable=SC2086
	apt-get install -y --no-install-recommends $missing
fi
