#!/bin/sh
# Writes a machine-readable debian/copyright (DEP-5) for parry from LICENSE.
#   copyright.sh LICENSE > copyright
set -eu
lic=$1
holder=$(sed -n 's/^Copyright (c) //p' "$lic" | head -n 1)
cat <<HDR
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: parry
Source: https://github.com/parryhq/parry

Files: *
Copyright: $holder
License: Expat

License: Expat
HDR
# License text: drop the title and copyright lines, indent, blank lines as " ."
sed -e '1,/^Copyright/d' "$lic" | sed -e '/./,$!d' | sed -e 's/^$/./' -e 's/^/ /'
