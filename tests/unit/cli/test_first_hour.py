"""An operator's first hour, without servers: every bad input and every failure is one line
with its documented exit code, and what the commands print reads as text, not as Python.

The same cases against the real console script, Redis and a worker are in
tests/integration/test_bad_input_matrix.py.
"""

from __future__ import annotations

import gc
import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from appliance import api
from appliance.broker import reach
from appliance.cli import cli, status, tasks
from appliance.config import envsource
from appliance.config.settings import get_settings
from appliance.core import exitcodes
from appliance.core.text import human_bytes, mask_secrets, mask_url
from appliance.errors import ConfigError, RecordNotFoundError


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def _one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    assert "Traceback" not in text
    return lines[0]


# The error boundary ---------------------------------------------------------------------


def _explode(*_: Any, **__: Any) -> Any:
    raise RuntimeError("kaboom at redis://:hunter2@10.0.0.1:6379/0\nsecond line")


def test_an_unexpected_exception_is_one_line_exit_70_without_secrets(
    runner: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(status, "collect_status", _explode)
    result = runner.invoke(cli, ["status"])
    assert result.exit_code == exitcodes.INTERNAL == 70
    line = _one_line(result.output)
    assert line.startswith("appliance: error: RuntimeError: kaboom at redis://:****@10.0.0.1")
    assert line.endswith(
        "this is a bug or an environment problem: rerun with --debug for the traceback"
    )
    assert "hunter2" not in result.output


@pytest.mark.parametrize("how", ["flag", "env"])
def test_debug_adds_the_traceback(
    runner: CliRunner, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    monkeypatch.setattr(status, "collect_status", _explode)
    if how == "env":
        monkeypatch.setenv("APPLIANCE_DEBUG", "1")
    result = runner.invoke(cli, ["--debug", "status"] if how == "flag" else ["status"])
    assert result.exit_code == 70
    assert "Traceback (most recent call last)" in result.output
    assert result.output.strip().splitlines()[-1].startswith("appliance: error: RuntimeError")


def test_click_usage_errors_still_exit_2(runner: CliRunner) -> None:
    result = runner.invoke(cli, ["tasks", "list", "--limit", "0"])
    assert result.exit_code == 2 and "Traceback" not in result.output


def test_the_cli_collects_garbage_before_the_interpreter_exits() -> None:
    """A result left in a reference cycle is finalized while imports still work: its
    __del__ at interpreter exit printed `Exception ignored ... sys.meta_path is None`."""
    code = (
        "import sys\n"
        "class Result:\n"
        "    def __del__(self):\n"
        "        import colorsys  # an import, as Celery's unsubscribe path may do\n"
        "        print('finalized', file=sys.stderr)\n"
        "r = Result(); r.cycle = r; del r\n"
        "import gc; gc.disable()\n"
        "sys.argv = ['appliance', '--version']\n"
        "from appliance.cli import main\n"
        "main()\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "finalized" in done.stderr and "Exception ignored" not in done.stderr


def test_a_released_result_leaves_nothing_for_its_del() -> None:
    removed: list[Any] = []

    class Backend:
        def remove_pending_result(self, result: Any) -> None:
            removed.append(result)

    class Result:
        backend: Any = Backend()

    result = Result()
    api._release(result)
    assert removed == [result] and result.backend is None
    api._release(result)  # again: nothing to do
    assert len(removed) == 1
    gc.collect()


# Confirmation without a terminal -----------------------------------------------------------


def test_a_destructive_command_without_a_terminal_needs_yes(
    runner: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    from appliance.records import maintenance

    monkeypatch.setattr(maintenance, "count_records", lambda *a, **kw: 3)
    deleted: list[Any] = []
    monkeypatch.setattr(maintenance, "delete_batch", lambda *a, **kw: deleted.append(1) or 0)
    result = runner.invoke(cli, ["tasks", "purge", "--older-than", "30d"])
    assert result.exit_code == exitcodes.NOT_CONFIRMED == 64
    line = _one_line(result.output)
    assert line.startswith("appliance: error: appliance tasks purge deletes 3 task record(s)")
    assert "pass --yes to confirm without a terminal" in line and "Aborted" not in line
    assert deleted == []


# Health: Nagios codes for bad arguments ------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["health", "--warn", "foo=1"],
        ["health", "--crit", "latency_ms=fast"],
        ["health", "--format", "xml"],
        ["health", "--bogus"],
        ["redis", "check", "--bogus"],
    ],
    ids=["warn-name", "crit-number", "format", "unknown-option", "redis-check"],
)
def test_a_bad_health_argument_is_unknown_exit_3(runner: CliRunner, args: list[str]) -> None:
    result = runner.invoke(cli, args)
    assert result.exit_code == exitcodes.NAGIOS_UNKNOWN == 3, result.output
    line = _one_line(result.stdout)
    assert line.startswith("APPLIANCE UNKNOWN - bad argument: ") and "--help" in line


# Output that reads as text -------------------------------------------------------------------


def test_record_counts_and_empty_queues_read_as_text() -> None:
    assert status.counts({"FAILURE": 2, "SUCCESS": 1}) == "SUCCESS 1, FAILURE 2"
    assert status.counts({}) == "none"
    assert status.oldest({"depth": 0, "oldest_age": 0.0}) == "-"
    assert status.oldest({"depth": 3, "oldest_age": 12.4}) == "12s"
    assert status.oldest({"count": 0, "oldest_age": 0.0}) == "-"


def _record(**fields: Any) -> dict[str, Any]:
    base = {
        "id": "6f5f8e55-e688-46ef-bb0f-c11616c76a39",
        "name": "reports.monthly_revenue_by_customer_segment",
        "status": "FAILURE",
        "created_at": "2026-12-04T19:14:54.1+00:00",
        "started_at": "2026-12-04T19:14:55+00:00",
        "finished_at": "2026-12-04T19:15:03.5+00:00",
        "args": [{"customer": "x" * 80}],
        "kwargs": {"month": "2026-11"},
        "error": "ValueError: " + "no data for that month " * 10,
        "retries": 0,
        "worker": "default.0@a-rather-long-hostname.internal",
        "progress": 0,
        "progress_message": None,
    }
    return {**base, **fields}


def test_tasks_list_fits_100_columns(runner: CliRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    from appliance.records import store

    records = [
        _record(),
        _record(status="SUCCESS", error=None, args=[2, 3], kwargs={}),
        _record(status="STARTED", progress=40, finished_at=None, error=None),
    ]
    monkeypatch.setattr(store, "list_records", lambda *a, **kw: records)
    result = runner.invoke(cli, ["tasks", "list"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert max(len(line) for line in lines) <= tasks.LIST_WIDTH == 100, result.output
    assert all(r["id"] in result.output for r in records)  # ids are never cut
    assert "\u2026" in result.output  # the long name, args and error are
    assert "took 8.5s" in result.output and "on default.0" in result.output
    assert "{'" not in result.output


def test_human_sizes_and_masked_text() -> None:
    assert human_bytes(6319050752) == "5.9GiB"
    assert human_bytes(256 * 1024 * 1024) == "256MiB"
    assert human_bytes(512) == "512B"
    assert mask_secrets("to redis://user:pw@h:1/0 and rediss://:x@y/1") == (
        "to redis://user:****@h:1/0 and rediss://:****@y/1"
    )
    assert mask_url("redis://:pw@127.0.0.1:notaport/0") == "redis://:****@127.0.0.1:notaport/0"


# Settings: where a value came from, files, URLs, drivers ---------------------------------------


def test_a_bad_value_says_where_it_is_set(isolated_env: Path) -> None:
    isolated_env.write_text("APPLIANCE_QUEUES=bad name\n")
    get_settings.cache_clear()
    with pytest.raises(ConfigError) as raised:
        get_settings()
    assert f"(in env file {isolated_env})" in str(raised.value)


def test_an_env_file_that_is_not_utf8_names_the_file(isolated_env: Path) -> None:
    isolated_env.write_bytes(b"APPLIANCE_QUEUES=default\nAPPLIANCE_LOG_LEVEL=d\xe9bug\n")
    get_settings.cache_clear()
    with pytest.raises(ConfigError) as raised:
        get_settings()
    message = str(raised.value)
    assert str(isolated_env) in message and "not UTF-8" in message and "line 2" in message


def test_an_unparsable_env_line_is_one_warning_naming_the_file(
    isolated_env: Path, caplog: pytest.LogCaptureFixture
) -> None:
    isolated_env.write_text("APPLIANCE_LOG_LEVEL=INFO\nthis is not an assignment\n")
    get_settings.cache_clear()
    with caplog.at_level(logging.WARNING):
        get_settings()
        envsource.raw_values()
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert lines == [
        f"env file {isolated_env}: line 2 is not KEY=VALUE and is ignored; "
        "fix: correct or remove it"
    ]


@pytest.mark.parametrize(
    ("var", "value", "says"),
    [
        ("APPLIANCE_BROKER_URL", "redis://:pw@127.0.0.1:notaport/0", "bad port"),
        ("APPLIANCE_RESULT_BACKEND", "redis://127.0.0.1:6379/x", "'/x' is not a number"),
        ("APPLIANCE_DATABASE_URL", "postgresql://u:pw@db:5432x/app", "bad port"),
    ],
    ids=["broker-port", "backend-db", "database-port"],
)
def test_urls_are_checked_without_a_network(
    runner: CliRunner, monkeypatch: pytest.MonkeyPatch, var: str, value: str, says: str
) -> None:
    monkeypatch.setenv(var, value)
    result = runner.invoke(cli, ["config", "check"])
    assert result.exit_code == 78
    line = _one_line(result.output)
    assert var in line and says in line and "pw@" not in line


def test_config_check_finds_unusable_paths(
    runner: CliRunner, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    monkeypatch.setenv("APPLIANCE_STATE_DIR", str(a_file))
    result = runner.invoke(cli, ["config", "check"])
    assert result.exit_code == 78
    assert "APPLIANCE_STATE_DIR" in _one_line(result.output)

    monkeypatch.setenv("APPLIANCE_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("APPLIANCE_DATABASE_URL", f"sqlite:///{a_file}/records.db")
    get_settings.cache_clear()
    result = runner.invoke(cli, ["config", "check"])
    assert result.exit_code == 78
    line = _one_line(result.output)
    assert "APPLIANCE_DATABASE_URL" in line and "cannot be created" in line


def test_a_postgres_url_without_psycopg_is_a_config_error(
    runner: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    from appliance.records import db

    monkeypatch.setitem(sys.modules, "psycopg", None)  # import psycopg -> ImportError
    monkeypatch.setenv("APPLIANCE_DATABASE_URL", "postgresql://app:secret@db.internal/app")
    monkeypatch.setenv("APPLIANCE_BROKER_URL", "redis://127.0.0.1:1/0")  # nothing listens
    db.dispose_all()
    for args in (["tasks", "list"], ["db", "status"], ["config", "check"]):
        result = runner.invoke(cli, args)
        assert result.exit_code == 78, (args, result.output)
        line = _one_line(result.output)
        assert "psycopg is not installed" in line and "pip install 'psycopg[binary]'" in line
        assert "secret" not in line
    result = runner.invoke(cli, ["health", "--db"])
    assert result.exit_code == 3
    assert _one_line(result.stdout).startswith("APPLIANCE UNKNOWN - APPLIANCE_DATABASE_URL")


def test_a_task_module_that_does_not_import_is_a_config_error(
    runner: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    from appliance import celery_app

    monkeypatch.setenv("APPLIANCE_TASK_MODULES", "no_such_module_xyz")
    result = runner.invoke(cli, ["config", "check"])
    assert result.exit_code == 78
    assert "module 'no_such_module_xyz' does not import" in _one_line(result.output)
    # Every other command loads the tasks through load_tasks (the app's configuration is
    # read once per process, so the loader's failure is simulated here; the real console
    # script is driven in tests/integration/test_bad_input_matrix.py).
    missing = ModuleNotFoundError("No module named 'no_such_module_xyz'")
    missing.name = "no_such_module_xyz"

    def import_default_modules() -> None:
        raise missing

    monkeypatch.setattr(celery_app.app.loader, "import_default_modules", import_default_modules)
    with pytest.raises(ConfigError) as raised:
        celery_app.load_tasks()
    assert str(raised.value) == _one_line(result.output).removeprefix("appliance: error: ")


# The broker: where its URL came from ------------------------------------------------------------


def test_the_broker_origin_follows_the_sources(
    isolated_env: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    url, origin = envsource.resolve_broker()
    assert (url, origin.kind) == ("redis://127.0.0.1:6379/0", "default")
    embedded = tmp_path / "state" / "embedded"
    embedded.mkdir(parents=True)
    (embedded / "broker.url").write_text("redis://:pw@127.0.0.1:4242/0\n")
    url, origin = envsource.resolve_broker()
    assert (url, origin.kind) == ("redis://:pw@127.0.0.1:4242/0", "embedded")
    assert origin.source == str(embedded / "broker.url")
    isolated_env.write_text("APPLIANCE_BROKER_URL=redis://file-host:6379/0\n")
    url, origin = envsource.resolve_broker()
    assert origin.source == f"APPLIANCE_BROKER_URL in env file {isolated_env}"
    monkeypatch.setenv("APPLIANCE_BROKER_URL", "redis://env-host:6379/0")
    assert envsource.resolve_broker()[1].source == "APPLIANCE_BROKER_URL in the environment"


def test_a_wrong_password_is_not_reported_as_unreachable() -> None:
    setting = envsource.BrokerOrigin("setting", "APPLIANCE_BROKER_URL in env file /etc/x.env")
    url = "redis://:pw@127.0.0.1:6379/0"
    for reason in (
        "WRONGPASS invalid username-password pair or user is disabled.",
        "NOAUTH Authentication required.",
        "AuthenticationError: invalid username-password pair or user is disabled.",
    ):
        line = reach.problem(url, reason, setting)
        assert "refused the login" in line and "start redis-server" not in line
        assert line.endswith(
            "fix: correct the password (and user) in APPLIANCE_BROKER_URL in env file /etc/x.env"
        )
    down = reach.problem(url, "[Errno 111] Connection refused", setting)
    assert down.startswith("Redis unreachable at redis://:****@127.0.0.1:6379/0")
    embedded = envsource.BrokerOrigin("embedded", "/s/embedded/broker.url", Path("/s"))
    assert "state file /s/embedded/broker.url" in reach.problem(url, "refused", embedded)
    assert "APPLIANCE_BROKER_URL" not in reach.start_fix(embedded).split(":")[0]


def test_the_cli_says_which_broker_it_uses_only_when_none_is_configured(
    runner: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    from appliance.health import resp

    def refused(*_: Any, **__: Any) -> Any:
        reach.reaching()  # where Resp() announces
        raise resp.RespConnectionError("[Errno 111] Connection refused")

    monkeypatch.setattr(status, "collect_status", lambda cli: refused())
    result = runner.invoke(cli, ["status"])
    assert result.output.splitlines()[0] == (
        "appliance: using the default broker redis://127.0.0.1:6379/0 (no APPLIANCE_BROKER_URL set)"
    )
    monkeypatch.setenv("APPLIANCE_BROKER_URL", "redis://127.0.0.1:6399/0")
    result = runner.invoke(cli, ["status"])
    assert "using the" not in result.output
    reach.reaching()  # disarmed after the command: library code stays silent


# submit --wait, retry, revoke --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("record", "says"),
    [
        (
            {"status": "STARTED", "worker": "default.0@h"},
            "state STARTED: it is running on default.0@h and goes on",
        ),
        (
            {"status": "PENDING", "worker": None},
            "state PENDING: still queued, no worker has started it",
        ),
        (None, "state PENDING: still queued"),
    ],
    ids=["running", "queued", "no-record"],
)
def test_the_time_out_line_tells_the_records_state(
    monkeypatch: pytest.MonkeyPatch, record: dict[str, Any] | None, says: str
) -> None:
    monkeypatch.setattr(api, "get_task", lambda task_id: record)
    line = api._not_finished("t-1", 3, "PENDING")
    assert line.startswith("task t-1 did not finish within 3s (") and says in line
    assert "stays queued" not in line


def test_retry_of_a_success_says_it_already_succeeded(monkeypatch: pytest.MonkeyPatch) -> None:
    from appliance import operations
    from appliance.errors import ApplianceError
    from appliance.records import store

    monkeypatch.setattr(store, "get_record", lambda url, task_id: {"status": "SUCCESS"})
    with pytest.raises(ApplianceError) as raised:
        operations.retry(get_settings(), "t-1")
    message = str(raised.value)
    assert "already succeeded" in message and "--force" in message
    assert "wait for it to finish" not in message


def test_revoke_of_an_unknown_id_revokes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    from appliance import operations
    from appliance.broker import admin
    from appliance.records import store

    monkeypatch.setattr(store, "get_record", lambda url, task_id: None)
    monkeypatch.setattr(admin, "client", _explode)  # never reached
    with pytest.raises(RecordNotFoundError) as raised:
        operations.revoke(get_settings(), "no-such-id", must_exist=True)
    assert raised.value.exit_code == 66 and "nothing was revoked" in str(raised.value)


def test_record_write_warnings_name_the_write_not_the_function(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from appliance.records import signals

    with caplog.at_level(logging.WARNING):
        signals.note_write_error("_on_publish", RuntimeError("unable to open database file"))
    assert "task record not written at submit: RuntimeError" in caplog.text
    assert "_on_publish" not in caplog.text


def test_deadletter_show_prints_a_date(runner: CliRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    from appliance.cli import deadletter

    class Letter:
        def to_dict(self) -> dict[str, Any]:
            return {"id": "d1", "reason": "unknown task", "stored_at": 1764875694.5}

    monkeypatch.setattr(deadletter, "_find", lambda cli, letter_id: Letter())
    result = runner.invoke(cli, ["deadletter", "show", "d1"])
    assert result.exit_code == 0, result.output
    assert "stored_at:    2025-12-04 19:14:54 UTC" in result.output
    data = json.loads(runner.invoke(cli, ["deadletter", "show", "d1", "--json"]).output)
    assert data["stored_at"] == 1764875694.5
