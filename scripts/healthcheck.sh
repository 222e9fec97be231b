#!/usr/bin/env bash
# Cron wrapper of `appliance health`: silent when all is OK (so cron mails only problems),
# the check's output otherwise, and its Nagios exit code passed through
# (0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN).
#
#   healthcheck.sh [TEXTFILE]   TEXTFILE: also write a Prometheus textfile for node_exporter
#
# Installed by install.sh as /opt/appliance/bin/appliance-healthcheck; run by
# deploy/cron/appliance-healthcheck. APPLIANCE_BIN overrides the appliance command.
set -uo pipefail

APPLIANCE_BIN=${APPLIANCE_BIN:-/opt/appliance/bin/appliance}
args=(health)
if [ $# -gt 0 ] && [ -n "$1" ]; then args+=(--textfile "$1"); fi

output=$("$APPLIANCE_BIN" "${args[@]}" 2>&1)
code=$?
if [ "$code" -ne 0 ]; then printf '%s\n' "$output"; fi
exit "$code"
