#!/usr/bin/env bash
# Remove the Celery Appliance from this host, as root.
#
#   scripts/uninstall.sh [--purge] [--dry-run] [--root DIR]
#
# Stops and removes the systemd units (or the supervisord programs), the cron.d health check
# and the venv /opt/appliance. Keeps the settings (/etc/appliance), the data
# (/var/lib/appliance, /var/log/appliance), the `appliance` user and the Redis tuning, so a
# later install.sh picks up where this left off. --purge removes those too (the Redis
# packages and Redis's own data stay). --dry-run prints every step; --root DIR acts on a
# directory tree and prints the systemctl/userdel commands instead of running them.
#
# Exit codes: 0 removed (or nothing to remove); 1 a step failed; 64 bad usage; 77 not root.
set -euo pipefail

PURGE=0 DRY_RUN=0 ROOT=""
UNIT_DIR=/etc/systemd/system
UNITS=(appliance.target appliance-beat.service appliance-healthcheck.service
    appliance-healthcheck.timer appliance-flower.service appliance-worker@.service)

say() { printf 'uninstall.sh: %s\n' "$*"; }
die() { local code=$1; shift; printf 'uninstall.sh: error: %s\n' "$*" >&2; exit "$code"; }

while [ $# -gt 0 ]; do
    case "$1" in
        --purge) PURGE=1; shift ;;
        --dry-run) DRY_RUN=1; shift ;;
        --root) [ $# -ge 2 ] || die 64 "--root needs a directory"; ROOT=$(realpath -m "$2"); shift 2 ;;
        --root=*) ROOT=$(realpath -m "${1#*=}"); shift ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; exit 0 ;;
        *) die 64 "unknown option $1; fix: see scripts/uninstall.sh --help" ;;
    esac
done
[ "$ROOT" != / ] || ROOT=""
if [ "$(id -u)" -ne 0 ] && [ "$DRY_RUN" -eq 0 ] && [ -z "$ROOT" ]; then
    die 77 "must run as root; fix: sudo $0"
fi

run() { if [ "$DRY_RUN" -eq 1 ]; then say "would run: $*"; else "$@"; fi; }
host() { if [ -n "$ROOT" ]; then say "for the target system (--root): $*"; else run "$@"; fi; }
remove() {  # remove PATH...: only what exists
    local path
    for path in "$@"; do
        if [ -e "$ROOT$path" ] || [ -L "$ROOT$path" ]; then
            run rm -rf -- "$ROOT$path"
            say "removed $path"
        fi
    done
}

# systemd: stop everything of ours that is loaded, then remove the files.
if [ -z "$ROOT" ] && [ -d /run/systemd/system ] && command -v systemctl >/dev/null; then
    mapfile -t loaded < <(systemctl list-units --all --plain --no-legend 'appliance*' \
        | awk '{print $1}')
    if [ ${#loaded[@]} -gt 0 ]; then run systemctl stop "${loaded[@]}"; fi
    mapfile -t enabled < <(find "$UNIT_DIR" -name 'appliance*' -path '*.wants/*' -printf '%f\n' | sort -u)
    if [ ${#enabled[@]} -gt 0 ]; then run systemctl disable "${enabled[@]}" appliance.target || true; fi
fi
# The units, their drop-ins (ours and any `systemctl edit` overrides) and enablement links.
for unit in "${UNITS[@]}"; do remove "$UNIT_DIR/$unit"; done
for path in "$ROOT$UNIT_DIR"/appliance*.d "$ROOT$UNIT_DIR"/*.wants/appliance*; do
    remove "${path#"$ROOT"}"
done
if [ -z "$ROOT" ] && command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
    run systemctl daemon-reload
    run systemctl reset-failed 'appliance*' 2>/dev/null || true
fi

# supervisord and cron.
if [ -e "$ROOT/etc/supervisor/conf.d/appliance.conf" ]; then
    remove /etc/supervisor/conf.d/appliance.conf
    if command -v supervisorctl >/dev/null; then
        host supervisorctl update || say "supervisord not running: nothing to stop"
    fi
fi
remove /etc/cron.d/appliance-healthcheck /opt/appliance

if [ "$PURGE" -eq 1 ]; then
    remove /etc/appliance /var/lib/appliance /var/log/appliance /etc/redis/appliance.conf
    if grep -q '^include /etc/redis/appliance.conf$' "$ROOT/etc/redis/redis.conf" 2>/dev/null; then
        run sed -i -e '/^# Celery Appliance broker tuning (install.sh)$/d' \
            -e '\|^include /etc/redis/appliance.conf$|d' "$ROOT/etc/redis/redis.conf"
        say "removed the include of /etc/redis/appliance.conf from /etc/redis/redis.conf"
        if [ -z "$ROOT" ] && [ -d /run/systemd/system ]; then
            run systemctl try-restart redis-server.service
        fi
    fi
    if grep -q '^appliance:' "$ROOT/etc/passwd" 2>/dev/null; then host userdel appliance; fi
    say "purged settings, data, logs, the Redis tuning and the appliance user"
else
    say "kept /etc/appliance, /var/lib/appliance, /var/log/appliance and the appliance user (--purge removes them)"
fi
say "done"
