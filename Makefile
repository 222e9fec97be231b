# Shortcuts shared by people and CI; scripts/dev.sh does the real set-up work.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup up test unit integration system lint bench bench-health bench-recycle celery-suite

setup:          ## apt packages if missing, .venv, the package
	scripts/dev.sh setup

up:             ## run the appliance on embedded defaults (Ctrl-C stops it)
	scripts/dev.sh up

test:           ## what CI runs: lint, types, the whole suite
	scripts/dev.sh test

unit:           ## no servers needed
	scripts/dev.sh test tests/unit -q

integration:    ## real redis-server, workers, SQLite and PostgreSQL
	scripts/dev.sh test tests/integration -q

system:         ## real supervisord and systemd (root)
	scripts/dev.sh test tests/system -q

lint:
	$(VENV)/bin/ruff check appliance tests bench examples
	$(VENV)/bin/ruff format --check appliance tests bench examples
	$(VENV)/bin/mypy

bench:          ## the performance harness: every row, with ratios (about 15 min)
	$(VENV)/bin/python -m pip install -q -e '.[bench]'
	$(PY) bench/run.py

bench-health:   ## appliance health vs celery inspect ping (wall, RSS)
	$(PY) bench/health.py

bench-recycle:  ## drain throughput at max-tasks-per-child none/1000/100/10
	$(PY) bench/recycle.py

celery-suite:   ## Celery's own integration suite: stock worker vs appliance (ARGS=--help)
	scripts/celery-suite.sh $(ARGS)

# Locks: requirements/runtime.txt (the package + the postgres extra: what install.sh puts on
# hosts), requirements/runtime-flower.txt (the same plus the flower extra: install.sh
# --with-flower, held to the runtime's and the dev lock's versions by -c, so hosts run the
# Flower the tests ran) and requirements/dev.txt (plus the test, bench, flower and examples
# extras, held to the runtime's versions by -c). All carry sha256 hashes of every file of every release
# (wheels for all platforms and the sdist) and resolve for Python 3.11 on any OS/arch
# (--universal), so one lock serves x86_64 and aarch64 hosts. Unchanged pins stay put;
# `make lock UPGRADE=1` moves every package to the newest release pyproject.toml allows.
.PHONY: lock wheelhouse
UV_VERSION := 0.13.9
UV_VENV := .cache/uv-$(UV_VERSION)
UV := $(UV_VENV)/bin/uv
LOCK_FLAGS := --quiet --universal --python-version 3.11 --generate-hashes $(if $(UPGRADE),--upgrade)
DEV_EXTRAS := --extra postgres --extra test --extra bench --extra flower --extra examples

$(UV):
	python3 -m venv $(UV_VENV)
	$(UV_VENV)/bin/python -m pip install -q --disable-pip-version-check 'uv==$(UV_VERSION)'

lock: $(UV)     ## regenerate requirements/runtime.txt and dev.txt from pyproject.toml (UPGRADE=1)
	$(UV) pip compile pyproject.toml --extra postgres $(LOCK_FLAGS) -o requirements/runtime.txt
	$(UV) pip compile pyproject.toml $(DEV_EXTRAS) -c requirements/runtime.txt $(LOCK_FLAGS) \
		-o requirements/dev.txt
	$(UV) pip compile pyproject.toml --extra postgres --extra flower -c requirements/runtime.txt \
		-c requirements/dev.txt $(LOCK_FLAGS) -o requirements/runtime-flower.txt

# A wheelhouse for `install.sh --wheelhouse DIR` (offline): this package's wheel, the locked
# wheels (hash-checked as they download; binary only, so the offline install builds nothing)
# and the lock itself as DIR/requirements.txt, which install.sh then installs from. The wheels
# are for TARGET_PYTHON (default the hosts' Debian python3, which also decides the lock's
# markers, such as async-timeout's python_full_version < '3.11.3': run it with the hosts'
# Python); WHEELHOUSE_ARCH=aarch64 (or x86_64) fetches CPython 3.11 manylinux wheels for that
# architecture instead of TARGET_PYTHON's own. FLOWER=1 adds the wheels of
# requirements/runtime-flower.txt and that lock as DIR/requirements-flower.txt, for
# install.sh --wheelhouse DIR --with-flower.
WHEELHOUSE ?= dist/wheelhouse
TARGET_PYTHON ?= /usr/bin/python3
WHEELHOUSE_TARGET := $(if $(WHEELHOUSE_ARCH),--python-version 3.11 --implementation cp \
	--abi cp311 --abi abi3 --abi none --platform any --platform manylinux2014_$(WHEELHOUSE_ARCH) \
	$(foreach glibc,$(shell seq 17 36),--platform manylinux_2_$(glibc)_$(WHEELHOUSE_ARCH)))

WHEELHOUSE_LOCK := requirements/$(if $(FLOWER),runtime-flower,runtime).txt

wheelhouse:     ## wheels of this package + the runtime lock for install.sh --wheelhouse (FLOWER=1)
	mkdir -p $(WHEELHOUSE)
	$(TARGET_PYTHON) -m pip download -q --disable-pip-version-check --require-hashes --no-deps \
		--only-binary=:all: $(WHEELHOUSE_TARGET) -r $(WHEELHOUSE_LOCK) -d $(WHEELHOUSE)
	$(TARGET_PYTHON) -m pip wheel -q --disable-pip-version-check --no-deps -w $(WHEELHOUSE) .
	cp requirements/runtime.txt $(WHEELHOUSE)/requirements.txt
	$(if $(FLOWER),cp requirements/runtime-flower.txt $(WHEELHOUSE)/requirements-flower.txt)
