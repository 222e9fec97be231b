#!/usr/bin/env bash
# Install (or upgrade) the Celery Appliance on a Debian/Ubuntu host, as root.
#
#   scripts/install.sh [--redis-url URL] [--supervisor] [--wheelhouse DIR] [--with-flower]
#                      [--dry-run] [--root DIR] [--no-start]
#
# What it does, each step only when needed (a re-run is an upgrade and changes nothing else):
#   apt packages that are missing (python3-venv; redis-server unless --redis-url;
#   supervisor with --supervisor); the `appliance` system user; the venv /opt/appliance with
#   exactly the locked dependencies (requirements/runtime.txt, each file checked against its
#   sha256), then this package (from this checkout, or offline from --wheelhouse) without
#   dependencies of its own; /etc/appliance/appliance.env
#   (created once: generated Redis password, 0640 root:appliance); /var/lib/appliance; a local
#   Redis tuned for a broker (/etc/redis/appliance.conf, included from redis.conf);
#   `appliance db upgrade`; the systemd units (or with --supervisor the supervisord programs
#   and a cron.d health check), enabled and started; then `appliance health` and a summary.
#
# Options:
#   --redis-url URL   use this Redis (redis://, rediss:// or sentinel://) instead of a local one
#   --supervisor      run under supervisord (conf.d + cron) instead of systemd
#   --wheelhouse DIR  install offline: pip --no-index --find-links DIR (wheels of this package
#                     and all its locked dependencies for the host's python3: `make wheelhouse`,
#                     which also copies the lock it was built from into DIR as requirements.txt;
#                     without it the checkout's requirements/runtime.txt is used)
#   --dry-run         print every step, change nothing
#   --root DIR        install into the directory tree DIR (image builds, tests): paths are
#                     prefixed, and systemctl, apt-get, useradd, chown and the appliance's own
#                     commands are printed instead of run
#   --no-start        install and enable, but start nothing (and skip the health check)
#   --with-flower     also Flower, the web monitor, on 127.0.0.1:5555: the venv from the lock
#                     with the flower extra (requirements/runtime-flower.txt, or a wheelhouse's
#                     requirements-flower.txt: `make wheelhouse FLOWER=1`), FLOWER_BASIC_AUTH
#                     generated into the env file once (not printed), appliance-flower enabled
#                     and started (--supervisor: its program). Re-runs keep Flower while it is
#                     installed in the venv.
#
# Exit codes: 0 installed (health OK or WARNING); 1 a step failed; 64 bad usage;
# 65 bad --redis-url; 66 --wheelhouse has no wheel of this package, or no lock file (with
# --with-flower: no flower lock);
# 69 unsupported OS or no systemd (use --supervisor); 72 no python3 >= 3.11; 75 installed,
# but the health check is CRITICAL/UNKNOWN; 77 not root.
set -euo pipefail

EX_FAILED=1 EX_USAGE=64 EX_BAD_URL=65 EX_NO_WHEEL=66 EX_UNSUPPORTED=69 EX_PYTHON=72
EX_UNHEALTHY=75 EX_NOPERM=77

HERE=$(cd "$(dirname "${BASH_SOURCE[0]:-$0}")" && pwd)
CHECKOUT=$(dirname "$HERE")
PYTHON=${PYTHON:-/usr/bin/python3}
OS_RELEASE=${INSTALL_OS_RELEASE:-/etc/os-release}

VENV=/opt/appliance
ENV_FILE=/etc/appliance/appliance.env
STATE_DIR=/var/lib/appliance
LOG_DIR=/var/log/appliance
UNIT_DIR=/etc/systemd/system
REDIS_CONF=/etc/redis/redis.conf
REDIS_DROPIN=/etc/redis/appliance.conf
SUPERVISOR_CONF=/etc/supervisor/conf.d/appliance.conf
CRON_FILE=/etc/cron.d/appliance-healthcheck
USER_NAME=appliance
DEFAULT_TIME_LIMIT=360
STOP_MARGIN=30
# "celery" is Celery's own default queue: plain Celery clients (no appliance import) send there.
DEFAULT_GROUPS="default=default,high,low,celery"
# The lock of the runtime dependencies, with hashes (`make lock`); a wheelhouse carries its own.
CHECKOUT_LOCK=$CHECKOUT/requirements/runtime.txt
WHEELHOUSE_LOCK=requirements.txt
# The same plus the flower extra, for --with-flower (`make lock`; `make wheelhouse FLOWER=1`).
CHECKOUT_FLOWER_LOCK=$CHECKOUT/requirements/runtime-flower.txt
WHEELHOUSE_FLOWER_LOCK=requirements-flower.txt
FLOWER_UNIT=appliance-flower.service
FLOWER_ADDRESS=http://127.0.0.1:5555

REDIS_URL="" SUPERVISOR=0 WHEELHOUSE="" DRY_RUN=0 ROOT="" START=1 LOCK="" FLOWER=0
CHANGED=() PRINTED=()

say() { printf 'install.sh: %s\n' "$*"; }
die() { local code=$1; shift; printf 'install.sh: error: %s\n' "$*" >&2; exit "$code"; }
usage() { sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
    case "$1" in
        --redis-url) [ $# -ge 2 ] || die $EX_USAGE "--redis-url needs a URL"; REDIS_URL=$2; shift 2 ;;
        --redis-url=*) REDIS_URL=${1#*=}; shift ;;
        --supervisor) SUPERVISOR=1; shift ;;
        --wheelhouse) [ $# -ge 2 ] || die $EX_USAGE "--wheelhouse needs a directory"; WHEELHOUSE=$2; shift 2 ;;
        --wheelhouse=*) WHEELHOUSE=${1#*=}; shift ;;
        --dry-run) DRY_RUN=1; shift ;;
        --root) [ $# -ge 2 ] || die $EX_USAGE "--root needs a directory"; ROOT=$2; shift 2 ;;
        --root=*) ROOT=${1#*=}; shift ;;
        --no-start) START=0; shift ;;
        --with-flower) FLOWER=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) die $EX_USAGE "unknown option $1; fix: see scripts/install.sh --help" ;;
    esac
done
if [ -n "$ROOT" ]; then
    ROOT=$(realpath -m "$ROOT")
    [ "$ROOT" != / ] || ROOT=""
fi

# Steps ---------------------------------------------------------------------------------

quoted() { local out; printf -v out '%q ' "$@"; printf '%s' "${out% }"; }

# Run a command that changes the host; print it in --dry-run.
run() {
    if [ "$DRY_RUN" -eq 1 ]; then say "would run: $(quoted "$@")"; else "$@"; fi
}

# A command that acts on the live system (systemctl, apt-get, useradd, chown, the appliance's
# own commands as its user): printed instead under --root, where there is no such system.
host() {
    if [ -n "$ROOT" ]; then
        say "for the target system (--root): $(quoted "$@")"
        PRINTED+=("$*")
    else
        run "$@"
    fi
}

changed() { CHANGED+=("$*"); }

# put_file DEST MODE OWNER:GROUP < content: write DEST only when its content differs.
put_file() {
    local dest=$ROOT$1 mode=$2 owner=$3 tmp
    tmp=$(mktemp)
    cat >"$tmp"
    if [ -f "$dest" ] && cmp -s "$tmp" "$dest"; then
        rm -f "$tmp"
        return 1
    fi
    if [ "$DRY_RUN" -eq 1 ]; then
        say "would write $dest (mode $mode, $owner)"
        rm -f "$tmp"
    else
        mkdir -p "$(dirname "$dest")"
        install -m "$mode" "$tmp" "$dest"
        rm -f "$tmp"
        [ "$owner" = root:root ] || host chown "$owner" "$1"
    fi
    changed "wrote $1"
    return 0
}

make_dir() {  # make_dir PATH MODE OWNER:GROUP
    local dir=$ROOT$1
    [ -d "$dir" ] && return 0
    run install -d -m "$2" "$dir"
    host chown "$3" "$1"
    changed "created $1"
}

pkg_installed() {
    [ -z "$ROOT" ] || return 0  # not our business for a directory tree
    dpkg-query -W -f='${db:Status-Abbrev}' "$1" 2>/dev/null | grep -q '^ii'
}

APT_UPDATED=0
apt_install() {
    local missing=() pkg
    for pkg in "$@"; do pkg_installed "$pkg" || missing+=("$pkg"); done
    [ ${#missing[@]} -gt 0 ] || return 0
    if [ "$APT_UPDATED" -eq 0 ]; then run apt-get update -qq; APT_UPDATED=1; fi
    run env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
    changed "apt-get install ${missing[*]}"
}

env_value() {  # env_value NAME: the last NAME=value of the env file, if any
    local file=$ROOT$ENV_FILE
    [ -r "$file" ] || return 0
    sed -n "s/^$1=//p" "$file" | tail -n 1
}

as_appliance() {  # run an appliance command as its user with the system settings
    # umask 0027: what it creates (the SQLite database) is not world-readable.
    (umask 0027 && host runuser -u "$USER_NAME" -- env APPLIANCE_STATE_DIR="$STATE_DIR" "$VENV/bin/appliance" "$@")
}

# Checks --------------------------------------------------------------------------------

check_host() {
    if [ "$(id -u)" -ne 0 ] && [ "$DRY_RUN" -eq 0 ] && [ -z "$ROOT" ]; then
        die $EX_NOPERM "must run as root; fix: sudo $0 $*"
    fi
    local id="" like=""
    if [ -r "$OS_RELEASE" ]; then
        id=$(sed -n 's/^ID=//p' "$OS_RELEASE" | tr -d '"')
        like=$(sed -n 's/^ID_LIKE=//p' "$OS_RELEASE" | tr -d '"')
    fi
    case " $id $like " in
        *" debian "*|*" ubuntu "*) ;;
        *) die $EX_UNSUPPORTED "unsupported OS '${id:-unknown}'; fix: use Debian 12+ or Ubuntu 22.04+, or install by hand (docs/install.md)" ;;
    esac
    if [ "$SUPERVISOR" -eq 0 ] && [ -z "$ROOT" ] && [ ! -d /run/systemd/system ]; then
        [ "$DRY_RUN" -eq 1 ] || die $EX_UNSUPPORTED "systemd is not running on this host; fix: re-run with --supervisor"
        say "note: systemd is not running here, so a real run would stop (use --supervisor)"
    fi
    if [ -n "$REDIS_URL" ]; then
        [[ "$REDIS_URL" =~ ^(redis|rediss|sentinel)://([^/@[:space:]]*@)?[^/@:[:space:]]+(:[0-9]+)?(/[0-9]*)?([?;][^[:space:]]*)?$ ]] \
            || die $EX_BAD_URL "bad --redis-url '${REDIS_URL//:*@/:****@}'; fix: use redis://:PASSWORD@HOST:6379/0 (or rediss://, sentinel://)"
    fi
    if [ -n "$WHEELHOUSE" ]; then
        [ -d "$WHEELHOUSE" ] || die $EX_NO_WHEEL "--wheelhouse $WHEELHOUSE is not a directory"
        WHEELHOUSE=$(cd "$WHEELHOUSE" && pwd)
        WHEEL=$(find "$WHEELHOUSE" -maxdepth 1 -name 'celery_appliance-*.whl' | sort -V | tail -n 1)
        [ -n "$WHEEL" ] || die $EX_NO_WHEEL "no celery_appliance-*.whl in $WHEELHOUSE; fix: build it with pip wheel"
    elif [ ! -f "$CHECKOUT/pyproject.toml" ]; then
        die $EX_NO_WHEEL "no checkout at $CHECKOUT and no --wheelhouse; fix: run install.sh from a checkout"
    fi
    find_lock
}

flower_in_venv() {
    compgen -G "$ROOT$VENV/lib/python3*/site-packages/flower-*.dist-info" >/dev/null
}

find_lock() {
    if [ "$FLOWER" -eq 0 ] && flower_in_venv; then
        say "Flower is installed in $VENV: keeping it (as with --with-flower)"
        FLOWER=1
    fi
    [ "$FLOWER" -eq 0 ] || { find_flower_lock; return 0; }
    # A wheelhouse built from a lock (`make wheelhouse`) carries that lock, which matches its
    # wheels; else the checkout's. Without one there is no install: unpinned is not offered.
    if [ -n "$WHEELHOUSE" ] && [ -f "$WHEELHOUSE/$WHEELHOUSE_LOCK" ]; then
        LOCK=$WHEELHOUSE/$WHEELHOUSE_LOCK
    elif [ -f "$CHECKOUT_LOCK" ]; then
        LOCK=$CHECKOUT_LOCK
    else
        die $EX_NO_WHEEL "no lock file: neither ${WHEELHOUSE:+$WHEELHOUSE/$WHEELHOUSE_LOCK nor }$CHECKOUT_LOCK; fix: build the wheelhouse with make wheelhouse (or run install.sh from a checkout)"
    fi
}

find_flower_lock() {
    # The runtime lock plus the flower extra, at the same versions: the wheelhouse's when it
    # carries locks (it must then carry this one too, else its wheels lack Flower's), else
    # the checkout's.
    if [ -n "$WHEELHOUSE" ] && [ -f "$WHEELHOUSE/$WHEELHOUSE_FLOWER_LOCK" ]; then
        LOCK=$WHEELHOUSE/$WHEELHOUSE_FLOWER_LOCK
    elif [ -n "$WHEELHOUSE" ] && [ -f "$WHEELHOUSE/$WHEELHOUSE_LOCK" ]; then
        die $EX_NO_WHEEL "--with-flower: $WHEELHOUSE has no $WHEELHOUSE_FLOWER_LOCK (nor Flower's wheels); fix: build it with make wheelhouse FLOWER=1"
    elif [ -f "$CHECKOUT_FLOWER_LOCK" ]; then
        LOCK=$CHECKOUT_FLOWER_LOCK
    else
        die $EX_NO_WHEEL "--with-flower: no flower lock: neither ${WHEELHOUSE:+$WHEELHOUSE/$WHEELHOUSE_FLOWER_LOCK nor }$CHECKOUT_FLOWER_LOCK; fix: build the wheelhouse with make wheelhouse FLOWER=1 (or run install.sh from a checkout)"
    fi
}

check_python() {
    if [ ! -x "$PYTHON" ]; then
        apt_install python3 python3-venv
        [ "$DRY_RUN" -eq 1 ] && return 0
    fi
    [ -x "$PYTHON" ] || die $EX_PYTHON "no $PYTHON; fix: apt-get install python3 (3.11 or newer)"
    "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null \
        || die $EX_PYTHON "Python >= 3.11 is required, $PYTHON is $("$PYTHON" -V 2>&1); fix: use Debian 12+ / Ubuntu 24.04+ or set PYTHON=/path/to/python3.11"
}

# Install steps -------------------------------------------------------------------------

install_packages() {
    local pkgs=(python3-venv)
    [ -n "$REDIS_URL" ] || pkgs+=(redis-server)
    [ "$SUPERVISOR" -eq 0 ] || pkgs+=(supervisor)
    apt_install "${pkgs[@]}"
}

create_user() {
    if [ -z "$ROOT" ] && getent passwd "$USER_NAME" >/dev/null; then return 0; fi
    if [ -n "$ROOT" ] && grep -q "^$USER_NAME:" "$ROOT/etc/passwd" 2>/dev/null; then return 0; fi
    host useradd --system --user-group --home-dir "$STATE_DIR" --no-create-home \
        --shell /usr/sbin/nologin --comment "Celery Appliance" "$USER_NAME"
    [ -n "$ROOT" ] || changed "created user $USER_NAME"
}

make_dirs() {
    make_dir /etc/appliance 0750 "root:$USER_NAME"
    make_dir "$STATE_DIR" 0750 "$USER_NAME:$USER_NAME"
    make_dir "$LOG_DIR" 0750 "$USER_NAME:$USER_NAME"
}

write_env_file() {
    [ -f "$ROOT$ENV_FILE" ] && return 0
    local broker backend password
    if [ -n "$REDIS_URL" ]; then
        broker=$REDIS_URL
        backend="# APPLIANCE_RESULT_BACKEND= (default: database 1 of the broker's Redis)"
    else
        if [ "$DRY_RUN" -eq 1 ]; then password=GENERATED; else
            password=$("$PYTHON" -c 'import secrets; print(secrets.token_urlsafe(32))')
        fi
        broker="redis://:$password@127.0.0.1:6379/0"
        backend="APPLIANCE_RESULT_BACKEND=redis://:$password@127.0.0.1:6379/1"
    fi
    put_file "$ENV_FILE" 0640 "root:$USER_NAME" <<EOF || true
# Celery Appliance settings (docs/configuration.md). Created by install.sh on $(date -u +%F);
# re-runs keep this file. Read by the units (EnvironmentFile=) and by every \`appliance\` command.
APPLIANCE_BROKER_URL=$broker
$backend
APPLIANCE_DATABASE_URL=sqlite:///$STATE_DIR/appliance.db
# The worker groups: one appliance-worker@GROUP unit each (re-run install.sh after a change).
APPLIANCE_WORKER_GROUPS=$DEFAULT_GROUPS
# Hard time limit of a task in seconds; the units' stop timeout is this + $STOP_MARGIN s
# (re-run install.sh after a change).
APPLIANCE_TASK_TIME_LIMIT=$DEFAULT_TIME_LIMIT
EOF
}

flower_credentials() {
    # Flower's HTTP basic auth, generated once into the env file and never printed: the UI
    # and /api/* ask for it (`appliance flower` refuses to run without it).
    [ "$FLOWER" -eq 1 ] || return 0
    [ -z "$(env_value FLOWER_BASIC_AUTH)" ] || return 0
    local password
    if [ "$DRY_RUN" -eq 1 ]; then
        say "would append FLOWER_BASIC_AUTH (a generated password) to $ROOT$ENV_FILE"
    else
        password=$("$PYTHON" -c 'import secrets; print(secrets.token_urlsafe(24))')
        cat >>"$ROOT$ENV_FILE" <<EOF

# Flower's HTTP basic auth (USER:PASSWORD) for its UI and API on $FLOWER_ADDRESS,
# generated by install.sh --with-flower (docs/operations.md, Monitoring with Flower).
FLOWER_BASIC_AUTH=appliance:$password
EOF
    fi
    changed "added FLOWER_BASIC_AUTH to $ENV_FILE"
}

redis_maxmemory_mb() {
    # 25% of the host's RAM, at least 256 MB and at most 8 GB: room for queued messages
    # and results, leaving the rest to the workers. Tune in /etc/redis/appliance.conf.
    local total_kb
    total_kb=$(sed -n 's/^MemTotal: *\([0-9]*\) kB/\1/p' /proc/meminfo)
    local mb=$(( total_kb / 1024 / 4 ))
    [ "$mb" -ge 256 ] || mb=256
    [ "$mb" -le 8192 ] || mb=8192
    echo "$mb"
}

tune_redis() {
    [ -z "$REDIS_URL" ] || return 0
    local password
    password=$(env_value APPLIANCE_BROKER_URL | sed -n 's|^redis://:\([^@]*\)@.*|\1|p')
    if [ -z "$password" ] && [ "$DRY_RUN" -eq 1 ]; then password=GENERATED; fi
    [ -n "$password" ] || die $EX_FAILED "no Redis password in $ENV_FILE (APPLIANCE_BROKER_URL=redis://:PASSWORD@127.0.0.1:6379/0); fix: set it, or use --redis-url"
    local redis_changed=0
    put_file "$REDIS_DROPIN" 0640 "root:redis" <<EOF && redis_changed=1
# Celery Appliance: Redis tuned as a Celery broker. Written by install.sh (re-runs rewrite it);
# included at the end of $REDIS_CONF, so these values win.
bind 127.0.0.1 -::1
protected-mode yes
requirepass $password
# Never evict: an evicted key is a lost task. Writes fail instead, and the health check
# turns CRITICAL before that.
maxmemory-policy noeviction
# 25% of the host's RAM, between 256 MB and 8 GB.
maxmemory $(redis_maxmemory_mb)mb
# AOF fsync'd every second: a restart or crash keeps the accepted tasks.
appendonly yes
appendfsync everysec
EOF
    if [ -n "$ROOT" ] && [ ! -f "$ROOT$REDIS_CONF" ]; then
        # redis-server is not in the tree yet: its package brings redis.conf.
        say "for the target system (--root): append 'include $REDIS_DROPIN' to $REDIS_CONF"
        PRINTED+=("include $REDIS_DROPIN")
    elif ! grep -qx "include $REDIS_DROPIN" "$ROOT$REDIS_CONF" 2>/dev/null; then
        if [ "$DRY_RUN" -eq 1 ]; then
            say "would append 'include $REDIS_DROPIN' to $ROOT$REDIS_CONF"
        else
            mkdir -p "$(dirname "$ROOT$REDIS_CONF")"
            printf '\n# Celery Appliance broker tuning (install.sh)\ninclude %s\n' "$REDIS_DROPIN" >>"$ROOT$REDIS_CONF"
        fi
        changed "included $REDIS_DROPIN from $REDIS_CONF"
        redis_changed=1
    fi
    if [ "$redis_changed" -eq 1 ] && [ "$SUPERVISOR" -eq 0 ]; then
        host systemctl enable redis-server.service
        host systemctl restart redis-server.service
    elif [ "$redis_changed" -eq 1 ]; then
        host service redis-server restart
    fi
}

build_wheel() {
    # The wheel of this checkout (hatchling builds are reproducible: same code, same hash).
    local out
    out=$(mktemp -d)
    run "$ROOT$VENV/bin/python" -m pip wheel -q --disable-pip-version-check --no-deps -w "$out" "$CHECKOUT" >&2
    find "$out" -maxdepth 1 -name 'celery_appliance-*.whl' | head -n 1
}

install_venv() {
    local venv=$ROOT$VENV pip_args=(-q --disable-pip-version-check) stamp hash
    if [ ! -x "$venv/bin/python" ]; then
        run "$PYTHON" -m venv "$venv"
        changed "created venv $VENV"
    fi
    if [ -n "$WHEELHOUSE" ]; then
        pip_args+=(--no-index --find-links "$WHEELHOUSE")
    elif [ "$DRY_RUN" -eq 1 ]; then
        say "would install the locked dependencies into $venv: pip install --require-hashes -r $LOCK"
        say "would build the wheel of $CHECKOUT and install it into $venv (--no-deps)"
        return 0
    else
        WHEEL=$(build_wheel)
    fi
    # Up to date when neither the wheel nor the lock changed.
    stamp=$venv/.installed-wheel.sha256
    hash="$(sha256sum "$WHEEL" | cut -d' ' -f1) $(sha256sum "$LOCK" | cut -d' ' -f1)"
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$hash" ]; then return 0; fi
    # Exactly the locked dependencies, each file checked against the lock's sha256 (pip
    # refuses a file whose hash differs, or a dependency the lock misses); then this package
    # itself, with no dependencies of its own, even at an unchanged version number.
    run "$venv/bin/python" -m pip install "${pip_args[@]}" --require-hashes -r "$LOCK"
    run "$venv/bin/python" -m pip install "${pip_args[@]}" --no-deps --force-reinstall "$WHEEL"
    check_requirements "$venv"
    if [ -n "$ROOT" ] && [ "$DRY_RUN" -eq 0 ]; then
        # The venv will run as /opt/appliance: fix the scripts' interpreter lines.
        grep -rlI "^#!$venv/bin/python" "$venv/bin" | xargs -r sed -i "1s|^#!$venv/|#!$VENV/|"
    fi
    [ "$DRY_RUN" -eq 1 ] || echo "$hash" >"$stamp"
    changed "installed $(basename "$WHEEL") into $VENV"
    PACKAGE_CHANGED=1
}

check_requirements() {  # check_requirements VENV: the lock satisfies what this package requires
    local out
    if [ "$DRY_RUN" -eq 1 ]; then say "would run: $(quoted "$1/bin/python" -m pip check)"; return 0; fi
    out=$("$1/bin/python" -m pip check --disable-pip-version-check 2>&1) \
        || die $EX_FAILED "the locked dependencies do not satisfy this package: $out; fix: regenerate $LOCK with make lock"
}

install_helpers() {
    put_file "$VENV/bin/appliance-healthcheck" 0755 root:root <"$HERE/healthcheck.sh" || true
}

migrate_db() {
    as_appliance db upgrade
}

worker_groups() {
    local groups
    groups=$(env_value APPLIANCE_WORKER_GROUPS)
    groups=${groups:-$DEFAULT_GROUPS}
    tr ';' '\n' <<<"$groups" | sed -n 's/^ *\([A-Za-z0-9_.-]*\) *=.*/\1/p'
}

stop_timeout() {
    local limit
    limit=$(env_value APPLIANCE_TASK_TIME_LIMIT)
    [[ "$limit" =~ ^[0-9]+$ ]] || limit=$DEFAULT_TIME_LIMIT
    echo $(( limit + STOP_MARGIN ))
}

install_units() {
    local src=$CHECKOUT/deploy/systemd unit units_changed=0 timeout
    [ -d "$src" ] || src=$("$ROOT$VENV/bin/python" -c 'from appliance.host.supervisor_conf import deploy_dir; print(deploy_dir())')/systemd
    timeout=$(stop_timeout)
    for unit in appliance.target appliance-beat.service appliance-healthcheck.service \
        appliance-healthcheck.timer appliance-flower.service; do
        put_file "$UNIT_DIR/$unit" 0644 root:root <"$src/$unit" && units_changed=1
    done
    put_file "$UNIT_DIR/appliance-worker@.service" 0644 root:root \
        < <(sed "s/^TimeoutStopSec=.*/TimeoutStopSec=$timeout/" "$src/appliance-worker@.service") \
        && units_changed=1
    local dropins=(appliance-worker@.service appliance-beat.service)
    [ "$FLOWER" -eq 0 ] || dropins+=("$FLOWER_UNIT")
    if [ -z "$REDIS_URL" ]; then
        for unit in "${dropins[@]}"; do
            put_file "$UNIT_DIR/$unit.d/redis-local.conf" 0644 root:root <"$src/redis-local.conf" \
                && units_changed=1
        done
    fi
    [ "$units_changed" -eq 0 ] || host systemctl daemon-reload
    UNITS_CHANGED=$units_changed
}

enable_units() {
    local groups=() group wanted instance
    mapfile -t groups < <(worker_groups)
    host systemctl enable appliance.target appliance-beat.service appliance-healthcheck.timer
    [ "$FLOWER" -eq 0 ] || host systemctl enable "$FLOWER_UNIT"
    for group in "${groups[@]}"; do host systemctl enable "appliance-worker@$group.service"; done
    # A group that is no longer configured: stop and disable its instance.
    for wanted in "$ROOT$UNIT_DIR"/appliance.target.wants/appliance-worker@*.service; do
        [ -e "$wanted" ] || [ -L "$wanted" ] || continue
        instance=$(basename "$wanted" .service)
        instance=${instance#appliance-worker@}
        if ! printf '%s\n' "${groups[@]}" | grep -qx "$instance"; then
            host systemctl disable --now "appliance-worker@$instance.service"
            changed "removed worker group $instance"
        fi
    done
    [ "$START" -eq 1 ] || return 0
    if [ "${PACKAGE_CHANGED:-0}" -eq 1 ] || [ "${UNITS_CHANGED:-0}" -eq 1 ]; then
        # An upgrade: restart so the new code and units run (workers drain first).
        for group in "${groups[@]}"; do
            host systemctl try-restart "appliance-worker@$group.service"
        done
        host systemctl try-restart appliance-beat.service
        [ "$FLOWER" -eq 0 ] || host systemctl try-restart "$FLOWER_UNIT"
    fi
    # Type=notify: this returns once every worker and beat has said READY.
    host systemctl start appliance.target appliance-healthcheck.timer
}

install_supervisor() {
    local rendered flower_flag=()
    [ "$FLOWER" -eq 0 ] || flower_flag=(--flower)
    make_dir "$(dirname "$SUPERVISOR_CONF")" 0755 root:root
    if [ "$DRY_RUN" -eq 1 ] && [ ! -x "$ROOT$VENV/bin/python" ]; then
        say "would write $ROOT$SUPERVISOR_CONF (appliance deploy supervisor-conf${flower_flag[*]:+ ${flower_flag[*]}})"
    else
        rendered=$(APPLIANCE_ENV_FILE=$ROOT$ENV_FILE APPLIANCE_STATE_DIR=$STATE_DIR \
            "$ROOT$VENV/bin/python" -m appliance deploy supervisor-conf \
            --bin "$VENV/bin/appliance" --user "$USER_NAME" --log-dir "$LOG_DIR" "${flower_flag[@]}")
        if put_file "$SUPERVISOR_CONF" 0644 root:root <<<"$rendered"; then
            UNITS_CHANGED=1
        fi
    fi
    put_file "$CRON_FILE" 0644 root:root <"$CHECKOUT/deploy/cron/appliance-healthcheck" || true
    [ "$START" -eq 1 ] || return 0
    host service supervisor start
    host supervisorctl reread
    host supervisorctl update appliance
    if [ "${PACKAGE_CHANGED:-0}" -eq 1 ]; then host supervisorctl restart 'appliance:*'; fi
}

health_check() {
    [ "$START" -eq 1 ] || return 0
    if [ -n "$ROOT" ] || [ "$DRY_RUN" -eq 1 ]; then
        as_appliance health
        return 0
    fi
    # Workers write their first heartbeat as they start; give a slow start a minute.
    local code=0 output tries=30
    while :; do
        code=0
        output=$(runuser -u "$USER_NAME" -- "$VENV/bin/appliance" health 2>&1) || code=$?
        if [ "$code" -le 1 ] || [ "$tries" -le 0 ]; then break; fi
        tries=$((tries - 1))
        sleep 2
    done
    say "health: $output"
    HEALTH_CODE=$code
}

summary() {
    local item prefix=""
    say "summary${ROOT:+ (into $ROOT)}:"
    if [ "$DRY_RUN" -eq 1 ]; then say "  dry run: nothing was changed"; prefix="[dry run] "; fi
    if [ ${#CHANGED[@]} -eq 0 ]; then
        say "  nothing changed: already installed and up to date"
    else
        for item in "${CHANGED[@]}"; do say "  $prefix$item"; done
    fi
    if [ -n "$ROOT" ] && [ ${#PRINTED[@]} -gt 0 ]; then
        say "run the commands printed 'for the target system' on it (first boot or chroot)"
    fi
    if [ "$SUPERVISOR" -eq 1 ]; then
        say "manage: supervisorctl status 'appliance:*'; logs in $LOG_DIR"
    else
        say "manage: systemctl status 'appliance-*'; journalctl -u 'appliance-*'"
    fi
    say "settings: $ENV_FILE; check: $VENV/bin/appliance health"
    if [ "$FLOWER" -eq 1 ]; then
        say "flower: $FLOWER_ADDRESS (user and password: FLOWER_BASIC_AUTH in $ENV_FILE)"
    fi
}

check_host "$@"
check_python
PACKAGE_CHANGED=0 UNITS_CHANGED=0 HEALTH_CODE=0
install_packages
create_user
make_dirs
write_env_file
flower_credentials
tune_redis
install_venv
install_helpers
migrate_db
if [ "$SUPERVISOR" -eq 1 ]; then install_supervisor; else install_units; enable_units; fi
health_check
summary
if [ "$HEALTH_CODE" -ge 2 ]; then
    die $EX_UNHEALTHY "installed, but \`appliance health\` is not OK; fix: see journalctl -u 'appliance-*' (or $LOG_DIR)"
fi
exit 0
