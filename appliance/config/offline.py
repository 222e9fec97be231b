"""`appliance config check`: everything about the settings that can be judged without a
network: the env file, URLs, paths and their permissions, task modules, drivers.

Each problem is one line naming the variable, the problem and the fix (exit 78). What
needs Redis or the database server (reachable, password right, eviction policy) is
`appliance health` and the worker's own preflight.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from appliance.config.envsource import env_file_lines_ignored
from appliance.config.settings import Settings
from appliance.errors import ConfigError
from appliance.health.resp import _CERT_REQS


def problems(settings: Settings) -> list[str]:
    """Every problem found, one line each (empty: the settings are fine offline)."""
    found: list[str] = []
    path, lines = env_file_lines_ignored()
    found += [
        f"env file {path}: line {line} is not KEY=VALUE (it would be ignored); "
        "fix: correct or remove it"
        for line in lines
    ]
    state_dir = _state_dir(settings.state_dir)
    found += state_dir
    if settings.database_url or not state_dir:  # else the default file only repeats it
        found += _database(settings)
    for var, url in (
        ("APPLIANCE_BROKER_URL", settings.broker_url),
        ("APPLIANCE_RESULT_BACKEND", settings.effective_result_backend),
    ):
        found += _tls_files(var, url)
    found += _task_modules(settings.task_modules)
    return found


def _writable_dir(path: Path) -> str | None:
    """Why *path* cannot be a directory this user writes in (created if need be), or None."""
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe != path:  # created on first use: its nearest existing parent must allow it
        if not probe.is_dir():
            return f"{probe} is a file, so {path} cannot be created"
        if not os.access(probe, os.W_OK | os.X_OK):
            return f"{path} does not exist and this user may not create it in {probe}"
        return None
    if not path.is_dir():
        return f"{path} is not a directory"
    if not os.access(path, os.W_OK | os.X_OK):
        return f"{path} is not writable by this user"
    return None


def _state_dir(state_dir: Path) -> list[str]:
    why = _writable_dir(state_dir)
    if why is None:
        return []
    return [
        f"invalid APPLIANCE_STATE_DIR={state_dir}: {why}; fix: point it at a directory this "
        "user may write (the appliance user's, e.g. /var/lib/appliance), or fix its owner"
    ]


def _database(settings: Settings) -> list[str]:
    url = settings.effective_database_url
    if urlsplit(url).scheme.split("+")[0] in ("postgresql", "postgres"):
        from appliance.records.db import require_driver

        try:
            require_driver(url)
        except ConfigError as exc:
            return [str(exc)]
        return []
    from sqlalchemy.engine import make_url

    database = make_url(url).database
    if not database or database == ":memory:":
        return []
    path = Path(database)
    where = (
        "invalid APPLIANCE_DATABASE_URL: the SQLite file"
        if settings.database_url
        else "the task records' SQLite file (in APPLIANCE_STATE_DIR)"
    )
    fix = "fix: use a path this user may write (and its directory, for SQLite's journal)"
    if path.exists():
        if not path.is_file():
            return [f"{where} {path} is not a file; {fix}"]
        if not os.access(path, os.R_OK | os.W_OK):
            return [f"{where} {path} is not writable by this user; {fix}"]
        if not os.access(path.parent, os.W_OK | os.X_OK):
            return [
                f"{where} {path} is in a directory this user may not write, and SQLite writes "
                f"its journal there; {fix}"
            ]
        return []
    why = _writable_dir(path.parent)
    return [f"{where} {path} cannot be created ({why}); {fix}"] if why else []


def _tls_files(var: str, url: str) -> list[str]:
    found = []
    for item in url.split(";"):
        parts = urlsplit(item.strip())
        if parts.scheme != "rediss":
            continue
        params = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        reqs = params.get("ssl_cert_reqs", "required").lower()
        if reqs not in _CERT_REQS:
            found.append(
                f"invalid {var}: ssl_cert_reqs={reqs!r} is not required, optional or none; "
                "fix: correct the query parameter"
            )
        for key in ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile"):
            name = params.get(key)
            if name and not os.access(name, os.R_OK):
                found.append(
                    f"invalid {var}: {key}={name} is missing or not readable by this user; "
                    "fix: correct the path or its permissions"
                )
    return found


def _task_modules(modules: list[str]) -> list[str]:
    found = []
    for module in modules:
        try:
            importlib.import_module(module)
        except Exception as exc:
            found.append(task_module_problem(module, exc))
    return found


def task_module_problem(module: str, exc: BaseException) -> str:
    """The one line for a task module that does not import."""
    return (
        f"APPLIANCE_TASK_MODULES: module {module!r} does not import "
        f"({type(exc).__name__}: {exc}); fix: install it or correct the name"
    )
