# Shortcuts shared by people and CI; scripts/dev.sh does the real set-up work.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup up test unit integration system lint bench bench-health bench-recycle

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
