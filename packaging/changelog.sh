#!/bin/sh
# Writes a Debian-format changelog entry for this build from git.
#   changelog.sh VERSION | gzip -9n > changelog.gz
set -eu
version=$1
commit=$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
subject=$(git log -1 --format=%s 2>/dev/null || echo "local build")
date=$(git log -1 --format=%cD 2>/dev/null || date -R)
cat <<ENTRY
parry ($version) unstable; urgency=medium

  * Built from git commit $commit:
$(printf '%s\n' "$subject" | fold -s -w 70 | sed 's/^/    /')

 -- parry developers <parry@parryhq.org>  $date
ENTRY
