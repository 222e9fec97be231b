#!/usr/bin/env bash
# Set up a development/trial checkout on Debian/Ubuntu, then run something in it.
#
#   scripts/dev.sh up      apt packages if missing, .venv, the package; then `appliance up`
#   scripts/dev.sh test    the same plus test dependencies and PostgreSQL; then lint + all tests
#   scripts/dev.sh setup   only the set-up
#
# Uses the distribution's python3 (Debian 12: 3.11.2), as the appliance does in production.
# Needs root or sudo only when an apt package is missing.
# The dependencies are exactly the locked ones, each file checked against its sha256:
# requirements/runtime.txt (up, setup) or requirements/dev.txt (test: the runtime's versions
# plus the test, bench, flower and examples extras); then this package, editable, --no-deps.
# `make lock` regenerates both locks from pyproject.toml.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
VENV=${APPLIANCE_VENV:-$ROOT/.venv}
if [ -z "${PYTHON:-}" ]; then
    if [ -x /usr/bin/python3 ]; then PYTHON=/usr/bin/python3; else PYTHON=$(command -v python3 || true); fi
fi
MODE=${1:-setup}
shift || true

say() { printf 'dev.sh: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@";
    elif command -v sudo >/dev/null; then sudo "$@";
    else die "need root to run: $* (install it yourself, then re-run)"; fi
}

APT_UPDATED=0
apt_install() {
    command -v apt-get >/dev/null || die "missing $* and this is not a Debian/Ubuntu host: install $* yourself"
    if [ "$APT_UPDATED" -eq 0 ]; then as_root apt-get update -qq; APT_UPDATED=1; fi
    say "installing $*"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

[ -n "$PYTHON" ] || apt_install python3
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || die "Python >= 3.11 is required ($PYTHON is $("$PYTHON" -V 2>&1))"

# python3-venv (ensurepip) is a separate package on Debian.
if [ ! -x "$VENV/bin/python" ]; then
    if ! "$PYTHON" -m venv --help >/dev/null 2>&1 || ! "$PYTHON" -c 'import ensurepip' 2>/dev/null; then
        apt_install python3-venv
    fi
    "$PYTHON" -m venv "$VENV"
fi
command -v redis-server >/dev/null || apt_install redis-server

LOCK=requirements/runtime.txt
if [ "$MODE" = "test" ]; then
    LOCK=requirements/dev.txt
    # The deploy tests: systemd-analyze (unit checks), shellcheck (scripts), and as root
    # debootstrap + systemd-nspawn to boot a real systemd (tests/system).
    command -v systemd-analyze >/dev/null || apt_install systemd
    command -v shellcheck >/dev/null || apt_install shellcheck
    command -v promtool >/dev/null || apt_install prometheus  # promtool: `health` metrics lint
    if [ "$(id -u)" -eq 0 ]; then
        command -v debootstrap >/dev/null || apt_install debootstrap
        command -v systemd-nspawn >/dev/null || apt_install systemd-container
    fi
    # The PostgreSQL tests need a server on 127.0.0.1:5432 (trust auth for user postgres).
    if ! command -v pg_isready >/dev/null; then apt_install postgresql; fi
    if ! pg_isready -q -h 127.0.0.1 -p 5432; then
        say "starting PostgreSQL"
        for cluster in /etc/postgresql/*/main; do
            [ -d "$cluster" ] || continue
            version=$(basename "$(dirname "$cluster")")
            as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
        done
    fi
    # A fresh Debian cluster wants passwords on TCP: give the tests a role of their own.
    if [ -z "${APPLIANCE_TEST_POSTGRES_URL:-}" ] \
        && ! psql -qAt "postgresql://postgres@127.0.0.1:5432/postgres" -c 'select 1' >/dev/null 2>&1; then
        say "creating the PostgreSQL role appliance_test for the tests"
        echo "DO \$\$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'appliance_test') THEN
              CREATE ROLE appliance_test LOGIN CREATEDB PASSWORD 'appliance_test'; END IF; END \$\$;" \
            | as_root su postgres -c 'psql -q -v ON_ERROR_STOP=1'
        export APPLIANCE_TEST_POSTGRES_URL="postgresql://appliance_test:appliance_test@127.0.0.1:5432/postgres"
    fi
fi

PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
"${PIP[@]}" install -q --require-hashes -r "$LOCK"
"${PIP[@]}" install -q --no-deps -e .
if ! out=$("${PIP[@]}" check 2>&1); then
    die "pip check: $out; fix: make lock if pyproject.toml changed, else remove what was installed by hand"
fi

case "$MODE" in
    setup) say "ready: $VENV/bin/appliance --help" ;;
    up) exec "$VENV/bin/appliance" up "$@" ;;
    test)
        "$VENV/bin/ruff" check appliance tests
        "$VENV/bin/ruff" format --check appliance tests
        "$VENV/bin/mypy"
        exec "$VENV/bin/python" -m pytest "$@"
        ;;
    *) die "unknown mode $MODE (use up, test or setup)" ;;
esac
