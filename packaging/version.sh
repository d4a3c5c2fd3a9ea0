#!/bin/sh
# Prints the package version derived from git, valid for Debian and RPM:
#   on tag v1.2.3         -> 1.2.3
#   3 commits after it    -> 1.2.3+3.gabc1234
#   no tag at all         -> 0.0.0~git20261126233000.abc1234 (commit time, UTC)
#   uncommitted changes   -> .dirty appended (+dirty on a bare tag)
set -eu
dirty=
if ! git diff --quiet HEAD -- 2>/dev/null; then dirty=1; fi
if desc=$(git describe --tags --match 'v[0-9]*' 2>/dev/null); then
	# v1.2.3-3-gabc1234 -> 1.2.3+3.gabc1234; any other '-' becomes '~'
	v=$(printf '%s\n' "${desc#v}" | sed -E 's/-([0-9]+)-g([0-9a-f]+)$/+\1.g\2/; s/-/~/g')
	if [ -n "$dirty" ]; then
		case $v in *+*) v=$v.dirty ;; *) v=$v+dirty ;; esac
	fi
else
	hash=$(git rev-parse --short=7 HEAD 2>/dev/null || echo unknown)
	when=$(TZ=UTC git log -1 --format=%cd --date=format-local:%Y%m%d%H%M%S 2>/dev/null || echo 0)
	v=0.0.0~git$when.$hash
	if [ -n "$dirty" ]; then v=$v.dirty; fi
fi
printf '%s\n' "$v"
