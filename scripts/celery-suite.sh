#!/bin/sh
# Celery's own integration suite against an external worker: stock Celery (the control),
# the appliance on the consumers topology and on prefork. `make celery-suite` runs this.
#
# Set-up, reproducible and pinned: a scratch venv (CELERY_SUITE_VENV, default
# /tmp/celery-suite-venv) made from the distribution's python3 with the dev lock
# (requirements/dev.txt, hash-checked), this package (editable, no deps) and the suite's
# one extra test dependency, pytest-rerunfailures (hash-pinned below); the Celery sdist of
# the installed Celery version (hash-pinned below), extracted under .cache/celery-suite.
# Then bench/celery_suite.py runs; arguments go to it (--help).
set -eu

REPO=$(cd "$(dirname "$0")/.." && pwd)
VENV=${CELERY_SUITE_VENV:-/tmp/celery-suite-venv}
CACHE=${CELERY_SUITE_CACHE:-$REPO/.cache/celery-suite}
PYTHON=${CELERY_SUITE_PYTHON:-/usr/bin/python3}

CELERY_VERSION=5.7.0
CELERY_SDIST_SHA256=6a5dfcf6662287204f009a02002b9e66c83d4105e47ebabdc7079108772fc6f0
RERUNFAILURES="pytest-rerunfailures==16.7 --hash=sha256:edf1886209c2b7dafe35b5bf1708d6ec40ccf6c6b357f0f02807efcec0204c99"

mkdir -p "$CACHE"
stamp="$VENV/.celery-suite-stamp"
want=$(cat "$REPO/requirements/dev.txt" "$0" | sha256sum | cut -d' ' -f1)
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "celery-suite: setting up $VENV" >&2
    rm -rf "$VENV"
    "$PYTHON" -m venv "$VENV"
    pip="$VENV/bin/python -m pip -q --disable-pip-version-check"
    # CELERY_SUITE_WHEELS: a directory of already downloaded files of the lock (optional).
    find_links=${CELERY_SUITE_WHEELS:+--find-links $CELERY_SUITE_WHEELS}
    # shellcheck disable=SC2086
    $pip install --require-hashes --no-deps $find_links -r "$REPO/requirements/dev.txt"
    $pip install --no-deps -e "$REPO"
    reqs="$CACHE/extra-requirements.txt"
    echo "$RERUNFAILURES" >"$reqs"
    $pip install --require-hashes --no-deps -r "$reqs"
    echo "$want" >"$stamp"
fi

installed=$("$VENV/bin/python" -c 'import celery; print(celery.__version__)')
if [ "$installed" != "$CELERY_VERSION" ]; then
    echo "celery-suite: the venv has Celery $installed, this script pins the $CELERY_VERSION sdist;" \
        "update CELERY_VERSION and CELERY_SDIST_SHA256" >&2
    exit 78
fi

SDIST_ROOT="$CACHE/celery-$CELERY_VERSION"
if [ ! -f "$SDIST_ROOT/t/integration/conftest.py" ]; then
    tarball="$CACHE/celery-$CELERY_VERSION.tar.gz"
    if [ ! -f "$tarball" ]; then
        "$VENV/bin/python" -m pip download -q --disable-pip-version-check --no-deps \
            --no-binary :all: "celery==$CELERY_VERSION" -d "$CACHE"
    fi
    echo "$CELERY_SDIST_SHA256  $tarball" | sha256sum -c --quiet -
    tar -xzf "$tarball" -C "$CACHE"
fi

exec "$VENV/bin/python" "$REPO/bench/celery_suite.py" --sdist "$SDIST_ROOT" "$@"
