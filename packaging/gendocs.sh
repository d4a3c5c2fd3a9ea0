#!/bin/sh
# Generates man pages and shell completions from the built binaries'
# --help text (stdout or stderr: Go's flag package prints usage on stderr)
# and cobra's `completion` command, so the installed docs are always
# exactly what the binaries say.
#
#   gendocs.sh BINDIR OUTDIR VERSION
#
# Writes OUTDIR/man/parry.1.gz, OUTDIR/man/parryd.8.gz and
# OUTDIR/completions/{parry.bash,_parry,parry.fish}.
set -eu
bindir=$1 out=$2 version=$3
date=$(TZ=UTC git log -1 --format=%cd --date=format-local:%Y-%m-%d 2>/dev/null || date -u +%Y-%m-%d)
mkdir -p "$out/man" "$out/completions"

# roff-escape text: backslashes, and lines starting with . or '
esc() { sed -e 's/\\/\\e/g' -e "s/^\\([.']\\)/\\\\\\&\\1/"; }

# subcommands listed under "Available Commands:" in cobra's help
subcommands() {
	"$@" --help 2>&1 | awk '/^Available Commands:/{on=1; next} on && /^$/{exit} on {print $1}' |
		grep -v -x -e help -e completion || true
}

# page NAME SECTION SUMMARY CMD...: one man page from CMD --help and the
# --help of every subcommand (one level of nesting below that).
page() {
	name=$1 section=$2 summary=$3; shift 3
	{
		printf '.TH %s %s "%s" "parry %s" "parry manual"\n' "$(echo "$name" | tr a-z A-Z)" "$section" "$date" "$version"
		printf '.SH NAME\n%s \\- %s\n' "$name" "$summary"
		printf '.SH DESCRIPTION\nThis page is generated from the output of\n.B %s \\-\\-help\n.PP\n.nf\n' "$name"
		help=$("$@" --help 2>&1) || true
		if [ -z "$help" ]; then
			echo "gendocs: $* --help printed nothing" >&2
			exit 1
		fi
		printf '%s\n' "$help" | esc
		printf '.fi\n'
		subs=$(subcommands "$@")
		if [ -n "$subs" ]; then
			printf '.SH COMMANDS\n'
			for s in $subs; do
				printf '.SS %s %s\n.nf\n' "$name" "$s"
				"$@" "$s" --help 2>&1 | esc
				printf '.fi\n'
				for s2 in $(subcommands "$@" "$s"); do
					printf '.SS %s %s %s\n.nf\n' "$name" "$s" "$s2"
					"$@" "$s" "$s2" --help 2>&1 | esc
					printf '.fi\n'
				done
			done
		fi
		printf '.SH FILES\n.TP\n.I /etc/parry/parry.yaml\nconfiguration (optional; built-in defaults without it)\n'
		printf '.TP\n.I /var/lib/parry/\nstore, audit log, integrity baseline, evidence\n'
		printf '.TP\n.I /run/parry/parry.sock\ncontrol socket (mode 0660, group parry)\n'
		printf '.SH SEE ALSO\n'
		if [ "$name" = parry ]; then printf '.BR parryd (8)\n'; else printf '.BR parry (1)\n'; fi
		printf 'and /usr/share/doc/parry/.\n'
	} > "$out/man/$name.$section"
	gzip -9nf "$out/man/$name.$section"
}

page parry 1 "drive the parry threat response agent from a shell" "$bindir/parry"
page parryd 8 "parry host threat response daemon" "$bindir/parryd"

"$bindir/parry" completion bash > "$out/completions/parry.bash"
"$bindir/parry" completion zsh > "$out/completions/_parry"
"$bindir/parry" completion fish > "$out/completions/parry.fish"
