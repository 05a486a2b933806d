#!/usr/bin/env bash
# Check systemd/webhookd.service with `systemd-analyze verify`, also on a
# machine where webhookd is not installed.
#
# `systemd-analyze verify` refuses a unit whose Exec*= binary does not exist
# ("Command /opt/webhookd/bin/webhookd is not executable"), and
# /opt/webhookd is normally absent on a development or build machine. So the
# unit is copied to a temporary directory, still named webhookd.service, and
# every Exec*= line whose program lies under the install prefix /opt/webhookd/
# but is missing here is pointed at a stub executable placed under that
# directory at the same path (<tmp>/stub/opt/webhookd/bin/webhookd).
# Arguments, prefixes and every other line stay byte-for-byte as written, and
# system programs such as /bin/kill are still checked for real. (Verifying
# with --root=<tmp> and the stub at its real path was the alternative, but
# then the whole host unit tree and /bin/kill would have to be mirrored into
# <tmp> too.) Where webhookd is installed, the unit is verified unmodified.
# Messages are shown with the temporary path replaced by the real one; line
# numbers match because the rewrite is line for line.
#
# Exits non-zero if systemd-analyze fails or prints any line about
# webhookd.service; lines about other units on the host are shown but do not
# count.
#
# Usage: systemd/verify-unit.sh [path/to/webhookd.service]

set -euo pipefail

unit_src=${1:-"$(dirname -- "$(readlink -f -- "$0")")/webhookd.service"}
unit_name=$(basename -- "$unit_src")

if [[ ! -r $unit_src ]]; then
    echo "verify-unit: cannot read $unit_src" >&2
    exit 2
fi

if ! command -v systemd-analyze >/dev/null 2>&1; then
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
        echo "verify-unit: systemd-analyze not found; installing the systemd package" >&2
        apt-get update
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends systemd
        if ! command -v systemd-analyze >/dev/null 2>&1; then
            echo "verify-unit: the systemd package is installed but systemd-analyze" \
                "is still not on PATH ($PATH)." >&2
            exit 2
        fi
    else
        echo "verify-unit: systemd-analyze not found. Install the 'systemd' package" \
            "(e.g. 'apt-get install systemd' as root) and run this again." >&2
        exit 2
    fi
fi

workdir=$(mktemp -d)
trap 'rm -rf -- "$workdir"' EXIT
unit="$workdir/$unit_name"

# Rewrite each Exec*= line whose program is in the install prefix but
# missing. Exec lines look like
#   ExecStart=[special prefixes -@:+!|]/absolute/program args...
install_prefix=/opt/webhookd/
exec_re='^(Exec[A-Za-z]*=[-@:+!|]*)(/[^[:space:]]+)(.*)$'
rewritten=()
while IFS= read -r line || [[ -n $line ]]; do
    if [[ $line =~ $exec_re ]]; then
        prefix=${BASH_REMATCH[1]}
        program=${BASH_REMATCH[2]}
        rest=${BASH_REMATCH[3]}
        if [[ $program == "$install_prefix"* && ! -x $program ]]; then
            stub="$workdir/stub$program"
            mkdir -p -- "$(dirname -- "$stub")"
            printf '#!/bin/sh\nexit 0\n' >"$stub"
            chmod 0755 -- "$stub"
            line="$prefix$stub$rest"
            rewritten+=("$program")
        fi
    fi
    printf '%s\n' "$line"
done <"$unit_src" >"$unit"

for program in ${rewritten[@]+"${rewritten[@]}"}; do
    echo "verify-unit: $program is not installed here; verifying against a stub at that path"
done

echo "verify-unit: systemd-analyze verify $unit_name ($(systemd-analyze --version | head -n1))"
status=0
output=$(systemd-analyze verify "$unit" 2>&1) || status=$?
output=${output//"$unit"/"$unit_src"}
if [[ -n $output ]]; then
    printf '%s\n' "$output"
fi

# Any line naming the unit (or its temporary copy) is a warning or error about it.
complaints=$(printf '%s\n' "$output" | grep -F -e "$unit_name" -e "$unit_src" -e "$workdir" || true)
if [[ $status -ne 0 || -n $complaints ]]; then
    echo "verify-unit: FAILED: $unit_name (systemd-analyze exit status $status)" >&2
    exit 1
fi
echo "verify-unit: OK: $unit_name"
