"""An operator's first hour against the real console script: every command and every bad
input gives one clear line, its documented exit code, no traceback and no password.

Each case runs `python -m appliance ...` (what run_cli runs) with stdin not a terminal, or
the console script's entry point `appliance.cli:main` behind a `-c` wrapper where the
environment has to be broken on purpose (psycopg or tabulate not importable). Redis is
the session redis-server, or one with a password for the wrong-password cases; the worker
cases start a real worker. The same behaviours without servers are in
tests/unit/cli/test_first_hour.py.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from appliance.records import store
from tests.helpers.processes import free_port, wait_until
from tests.helpers.redis_server import RedisServer, local_redis_server
from tests.integration.conftest import WorkerFactory

PASSWORD = "matrix-Secret-9f3c"  # of the password Redis
WRONG = "matrix-Wrong-77aa"
DB_PASSWORD = "pg-Secret-5be1"
SECRETS = (PASSWORD, WRONG, DB_PASSWORD)

# The console script's entry point behind a wrapper that takes a module away: `import X`
# then raises ImportError, as when the package is not installed.
_WITHOUT = (
    "import sys; sys.modules[{module!r}] = None; sys.argv[0] = 'appliance'; "
    "from appliance.cli import main; main()"
)


@pytest.fixture(scope="module")
def password_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with local_redis_server(tmp_path_factory.mktemp("auth-redis"), password=PASSWORD) as (
        server,
        _proc,
    ):
        yield server


@dataclass
class World:
    """What a case may set up: the environment, files, Redis, records."""

    env: dict[str, str]
    tmp: Path
    redis: RedisServer
    password_redis: RedisServer

    @property
    def db_url(self) -> str:
        return self.env["APPLIANCE_DATABASE_URL"]

    def upgrade(self) -> None:
        assert run(self.env, "db", "upgrade").returncode == 0

    def record(self, task_id: str, status: str) -> None:
        self.upgrade()
        store.record_published(
            self.db_url, task_id=task_id, name="demo.add", args=[1, 2], kwargs={}, queue="default"
        )
        if status == "SUCCESS":
            store.record_succeeded(self.db_url, task_id=task_id, name="demo.add", result=3)

    def closed_port_url(self) -> str:
        return f"redis://127.0.0.1:{free_port()}/0"


def run(
    env: dict[str, str], *args: str, wrapper: str | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """The console script, stdin not a terminal (as under cron, systemd, a pipe)."""
    head = [sys.executable, "-c", wrapper] if wrapper else [sys.executable, "-m", "appliance"]
    return subprocess.run(
        [*head, *args],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@dataclass
class Case:
    args: list[str]
    code: int
    says: tuple[str, ...]  # in the one line
    stream: str = "stderr"  # where the one line goes (stdout for the Nagios commands)
    env: Callable[[World], dict[str, str]] | None = None  # overrides
    setup: Callable[[World], None] | None = None
    wrapper: str | None = None
    using: bool = False  # the "appliance: using the ... broker" line comes first
    not_says: tuple[str, ...] = ()
    check_stdout: Callable[[str], None] | None = None  # a command whose output is the point
    lines: int | None = 1  # on *stream*; None: any (a table)


def _postgres(world: World) -> dict[str, str]:
    return {"APPLIANCE_DATABASE_URL": f"postgresql://app:{DB_PASSWORD}@127.0.0.1:1/app"}


def _latin1_env_file(world: World) -> dict[str, str]:
    path = world.tmp / "latin1.env"
    path.write_bytes(b"APPLIANCE_LOG_LEVEL=INFO\nAPPLIANCE_QUEUES=d\xe9faut\n")
    return {"APPLIANCE_ENV_FILE": str(path)}


def _env_file_with_a_bad_line(world: World) -> dict[str, str]:
    path = world.tmp / "typo.env"
    path.write_text("APPLIANCE_LOG_LEVEL=INFO\nAPPLIANCE_QUEUES default\n")
    return {"APPLIANCE_ENV_FILE": str(path)}


def _a_file(world: World) -> Path:
    path = world.tmp / "a-file"
    path.write_text("not a directory\n")
    return path


def _wrong_password(world: World) -> dict[str, str]:
    server = world.password_redis
    return {
        "APPLIANCE_BROKER_URL": server.url(0, password=WRONG),
        "APPLIANCE_RESULT_BACKEND": server.url(1, password=WRONG),
    }


def _down(world: World) -> dict[str, str]:
    url = world.closed_port_url()
    return {"APPLIANCE_BROKER_URL": url, "APPLIANCE_RESULT_BACKEND": url.replace("/0", "/1")}


def _embedded_but_gone(world: World) -> dict[str, str]:
    """No broker configured; the state file of an `appliance up` that was killed."""
    state = world.tmp / "state-up"
    (state / "embedded").mkdir(parents=True)
    (state / "embedded" / "broker.url").write_text(
        f"redis://:{PASSWORD}@127.0.0.1:{free_port()}/0\n"
    )
    return {
        "APPLIANCE_BROKER_URL": "",  # removed below
        "APPLIANCE_RESULT_BACKEND": "",
        "APPLIANCE_STATE_DIR": str(state),
    }


def _a_dead_letter(world: World) -> None:
    from appliance.broker import deadletter

    letter = deadletter.make(b"\x00garbage", "not a task message", "default", task_id="dl-1")
    deadletter.store(world.redis.client(), letter)


def _dated(out: str) -> None:
    assert re.search(r"^stored_at:\s+\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC$", out, re.M), out


def _readable_status(out: str) -> None:
    assert "records: SUCCESS 1, PENDING" not in out  # state order: PENDING first
    assert re.search(r"^records: PENDING 1, SUCCESS 1$", out, re.M), out
    assert re.search(r"^default\s+0\s+-$", out, re.M), out  # an empty queue: oldest -
    assert "{'" not in out and "0s\n" not in out


def _narrow(out: str) -> None:
    assert max(len(line) for line in out.splitlines()) <= 100, out
    assert "\u2026" in out  # the long args were cut
    assert "wide-1" in out


def _human_sizes(out: str) -> None:
    assert re.search(r"^maxmemory\s+want \d+(\.\d)?[KMGT]iB ", out, re.M), out
    assert not re.search(r"want \d{6,}", out), out


def _long_args_record(world: World) -> None:
    world.upgrade()
    store.record_published(
        world.db_url,
        task_id="wide-1",
        name="demo.add",
        args=["x" * 200, 2],
        kwargs={},
        queue="default",
    )


def _two_records(world: World) -> None:
    world.record("rec-1", "SUCCESS")
    world.record("rec-2", "PENDING")


CASES: dict[str, Case] = {
    # Tracebacks and wrong exit codes ---------------------------------------------------
    "postgres-no-driver-tasks-list": Case(
        ["tasks", "list"],
        78,
        ("psycopg is not installed", "pip install 'psycopg[binary]'"),
        env=_postgres,
        wrapper=_WITHOUT.format(module="psycopg"),
    ),
    "postgres-no-driver-db-status": Case(
        ["db", "status"],
        78,
        ("psycopg is not installed", "postgres extra", "install.sh"),
        env=_postgres,
        wrapper=_WITHOUT.format(module="psycopg"),
    ),
    "postgres-no-driver-health-db": Case(
        ["health", "--db"],
        3,
        ("APPLIANCE UNKNOWN - APPLIANCE_DATABASE_URL", "psycopg is not installed", "fix:"),
        stream="stdout",
        env=_postgres,
        wrapper=_WITHOUT.format(module="psycopg"),
    ),
    "postgres-no-driver-config-check": Case(
        ["config", "check"],
        78,
        ("psycopg is not installed",),
        env=_postgres,
        wrapper=_WITHOUT.format(module="psycopg"),
    ),
    "env-file-not-utf8": Case(
        ["config", "show"],
        78,
        ("latin1.env is not UTF-8 text", "line 2", "fix:"),
        env=_latin1_env_file,
    ),
    "task-module-missing-submit": Case(
        ["submit", "demo.add", "--args", "[1, 2]"],
        78,
        ("APPLIANCE_TASK_MODULES: module 'nosuch_module' does not import", "fix:"),
        env=lambda w: {"APPLIANCE_TASK_MODULES": "nosuch_module"},
    ),
    "status-redis-down": Case(
        ["status"],
        69,
        ("Redis unreachable at redis://127.0.0.1:", "fix: start redis-server"),
        env=_down,
    ),
    "status-wrong-password": Case(
        ["status"],
        69,
        ("refused the login", "fix: correct the password (and user) in APPLIANCE_BROKER_URL"),
        env=_wrong_password,
        not_says=("unreachable", "start redis-server"),
    ),
    "health-bad-threshold": Case(
        ["health", "--warn", "foo=1"],
        3,
        ("APPLIANCE UNKNOWN - bad argument:", "foo=1"),
        stream="stdout",
    ),
    "health-bad-format": Case(
        ["health", "--format", "xml"],
        3,
        ("APPLIANCE UNKNOWN - bad argument:", "'xml'"),
        stream="stdout",
    ),
    "revoke-unknown-id": Case(
        ["tasks", "revoke", "no-such-task"],
        66,
        ("no task record with id no-such-task, so nothing was revoked", "--force"),
        setup=World.upgrade,
    ),
    "unexpected-error": Case(
        ["queues"],
        70,
        (
            "appliance: error: ModuleNotFoundError: import of tabulate halted",
            "this is a bug or an environment problem: rerun with --debug for the traceback",
        ),
        wrapper=_WITHOUT.format(module="tabulate"),
    ),
    # Messages that point the right way --------------------------------------------------
    "tasks-purge-no-terminal": Case(
        ["tasks", "purge", "--older-than", "0s"],
        64,
        (
            "appliance: error: appliance tasks purge deletes 1 task record(s)",
            "pass --yes to confirm without a terminal",
        ),
        setup=lambda w: w.record("old-1", "SUCCESS"),
        not_says=("Aborted",),
    ),
    "queues-purge-no-terminal": Case(
        ["queues", "purge", "default"],
        64,
        (
            "appliance queues purge deletes every waiting message of queue default",
            "pass --yes to confirm without a terminal",
        ),
    ),
    "retry-success": Case(
        ["tasks", "retry", "done-1"],
        1,
        ("task done-1 already succeeded", "--force"),
        setup=lambda w: w.record("done-1", "SUCCESS"),
        not_says=("wait for it to finish",),
    ),
    "queues-wrong-password": Case(
        ["queues"],
        69,
        ("refused the login", "correct the password (and user) in APPLIANCE_BROKER_URL"),
        env=_wrong_password,
        not_says=("start redis-server",),
    ),
    "submit-wrong-password": Case(
        ["submit", "demo.add", "--args", "[1, 2]"],
        69,
        (
            "could not publish demo.add",
            "fix: correct the password (and user) in APPLIANCE_BROKER_URL",
        ),
        env=_wrong_password,
        setup=World.upgrade,
    ),
    "health-wrong-password": Case(
        ["health"],
        2,
        ("APPLIANCE CRITICAL - Redis at", "refused the login", "correct the password"),
        stream="stdout",
        env=_wrong_password,
        lines=None,
    ),
    "embedded-broker-gone": Case(
        ["queues"],
        69,
        (
            "Redis unreachable at redis://:****@127.0.0.1:",
            "`appliance up`'s state file",
            "embedded/broker.url",
        ),
        env=_embedded_but_gone,
        using=True,
        not_says=("correct APPLIANCE_BROKER_URL",),
    ),
    "record-not-written-at-submit": Case(
        ["submit", "demo.add", "--args", "[1, 2]"],
        0,
        ("appliance: WARNING: task record not written at submit:", "no such table"),
        not_says=("_on_publish",),
    ),
    "env-file-bad-line": Case(
        ["config", "show"],
        0,
        ("typo.env: line 2 is not KEY=VALUE and is ignored",),
        env=_env_file_with_a_bad_line,
        not_says=("python-dotenv",),
    ),
    "config-check-env-file-bad-line": Case(
        ["config", "check"],
        78,
        ("typo.env: line 2 is not KEY=VALUE",),
        env=_env_file_with_a_bad_line,
    ),
    "config-check-port": Case(
        ["config", "check"],
        78,
        ("APPLIANCE_BROKER_URL", "notaport", "(in the environment)"),
        env=lambda w: {"APPLIANCE_BROKER_URL": f"redis://:{PASSWORD}@127.0.0.1:notaport/0"},
    ),
    "config-check-backend-db": Case(
        ["config", "check"],
        78,
        ("APPLIANCE_RESULT_BACKEND", "'/x' is not a number"),
        env=lambda w: {"APPLIANCE_RESULT_BACKEND": "redis://127.0.0.1:6379/x"},
    ),
    "config-check-unwritable-sqlite": Case(
        ["config", "check"],
        78,
        ("APPLIANCE_DATABASE_URL", "cannot be created"),
        env=lambda w: {"APPLIANCE_DATABASE_URL": f"sqlite:///{_a_file(w)}/records.db"},
    ),
    "config-check-state-dir-is-a-file": Case(
        ["config", "check"],
        78,
        ("APPLIANCE_STATE_DIR", "is not a directory"),
        env=lambda w: {"APPLIANCE_STATE_DIR": str(_a_file(w))},
    ),
    # Output readability (exit 0: the output is the point) --------------------------------
    "status-readable": Case(
        ["status"],
        0,
        (),
        setup=_two_records,
        lines=0,
        check_stdout=_readable_status,
    ),
    "tasks-list-100-columns": Case(
        ["tasks", "list"],
        0,
        (),
        setup=_long_args_record,
        lines=0,
        check_stdout=_narrow,
    ),
    "deadletter-show-date": Case(
        ["deadletter", "show", "dl-1"],
        0,
        (),
        setup=_a_dead_letter,
        lines=0,
        check_stdout=_dated,
    ),
    "redis-tune-human-sizes": Case(
        ["redis", "tune"],
        0,
        (),
        lines=0,
        check_stdout=_human_sizes,
    ),
}


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", list(CASES), ids=list(CASES))
def test_one_clear_line(
    name: str,
    appliance_env: dict[str, str],
    clean_redis: RedisServer,
    password_redis: RedisServer,
    tmp_path: Path,
) -> None:
    case = CASES[name]
    world = World(dict(appliance_env), tmp_path, clean_redis, password_redis)
    if case.env:
        world.env.update(case.env(world))
    world.env = {k: v for k, v in world.env.items() if v != ""}
    if case.setup:
        case.setup(world)
    result = run(world.env, *case.args, wrapper=case.wrapper)
    output = result.stdout + result.stderr
    assert result.returncode == case.code, output
    assert "Traceback" not in output and "Exception ignored" not in output, output
    for secret in SECRETS:
        assert secret not in output, output

    stream = result.stdout if case.stream == "stdout" else result.stderr
    lines = _lines(stream)
    if case.stream == "stdout":
        assert not [x for x in _lines(result.stderr) if "using the" not in x], result.stderr
    if case.using:
        assert lines and lines[0].startswith("appliance: using the embedded broker"), stream
        lines = lines[1:]
    if case.lines is not None:
        assert len(lines) == case.lines, stream
    if case.says:
        line = lines[0]
        for part in case.says:
            assert part in line, line
        for part in case.not_says:
            assert part not in line, line
    if case.check_stdout:
        assert _lines(result.stderr) == [], result.stderr
        case.check_stdout(result.stdout)


def test_debug_shows_the_traceback_of_an_unexpected_error(appliance_env: dict[str, str]) -> None:
    wrapper = _WITHOUT.format(module="tabulate")
    for env, args in (
        (appliance_env, ["--debug", "queues"]),
        (dict(appliance_env, APPLIANCE_DEBUG="1"), ["queues"]),
    ):
        result = run(env, *args, wrapper=wrapper)
        assert result.returncode == 70, result.stderr
        assert "Traceback (most recent call last)" in result.stderr
        last = result.stderr.strip().splitlines()[-1]
        assert last.startswith("appliance: error: ModuleNotFoundError: ")


# With a worker: waits that end early, and a revoke of a running task ------------------------


def _status(env: dict[str, str], task_id: str) -> str | None:
    record = store.get_record(env["APPLIANCE_DATABASE_URL"], task_id)
    return record["status"] if record else None


def _wait_timeout(env: dict[str, str], tmp_path: Path) -> tuple[int, list[str], str]:
    result = run(env, "submit", "demo.sleep", "--args", "[5]", "--wait", "2")
    return result.returncode, _lines(result.stderr), result.stdout


def _interrupted(env: dict[str, str], tmp_path: Path) -> tuple[int, list[str], str]:
    err = tmp_path / "stderr.txt"
    with err.open("w") as handle:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "appliance",
                "submit",
                "demo.sleep",
                "--args",
                "[5]",
                "--wait",
                "60",
            ],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=handle,
            text=True,
        )
        try:
            wait_until(lambda: "submitted demo.sleep as" in err.read_text(), 30, "the submit")
            time.sleep(0.5)  # inside the wait
            proc.send_signal(signal.SIGINT)
            out, _ = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return proc.returncode, _lines(err.read_text()), out


def _revoke_running(env: dict[str, str], tmp_path: Path) -> tuple[int, list[str], str]:
    submitted = run(env, "submit", "demo.sleep", "--args", "[5]")
    task_id = submitted.stdout.strip()
    wait_until(lambda: _status(env, task_id) == "STARTED", 30, "the task to start")
    result = run(env, "tasks", "revoke", task_id)
    return result.returncode, _lines(result.stderr), result.stdout


@pytest.mark.timeout(180)
@pytest.mark.parametrize(
    ("act", "code", "says"),
    [
        (
            _wait_timeout,
            75,
            ("did not finish within 2s (state STARTED: it is running on ", "and goes on"),
        ),
        (_interrupted, 130, ("appliance: interrupted; task ", "stays submitted and goes on")),
        (
            _revoke_running,
            0,
            ("; it is running now on ", "and will finish: use --terminate to stop it"),
        ),
    ],
    ids=["wait-timeout-running", "wait-interrupted", "revoke-running"],
)
def test_one_clear_line_with_a_worker(
    appliance_env: dict[str, str],
    start_worker: WorkerFactory,
    tmp_path: Path,
    act: Callable[[dict[str, str], Path], tuple[int, list[str], str]],
    code: int,
    says: tuple[str, ...],
) -> None:
    env = appliance_env
    assert run(env, "db", "upgrade").returncode == 0
    start_worker(env, "-c", "1")
    returncode, err_lines, out = act(env, tmp_path)
    assert returncode == code, (err_lines, out)
    everything = "\n".join(err_lines) + out
    assert "Traceback" not in everything and "Exception ignored" not in everything, everything
    if code == 0:  # the revoke: its one line is the result, on stdout
        assert err_lines == [], err_lines
        lines = _lines(out)
    else:  # submit --wait: the id on stderr ("submitted NAME as ID"), then the one line
        assert err_lines[0].startswith("submitted demo.sleep as "), err_lines
        lines = err_lines[1:]
    assert len(lines) == 1, lines
    for part in says:
        assert part in lines[0], lines[0]
    assert "stays queued" not in lines[0]


def test_redis_tune_json_keeps_exact_bytes(appliance_env: dict[str, str]) -> None:
    data = json.loads(run(appliance_env, "redis", "tune", "--json").stdout)
    assert data["planned"]["maxmemory"].isdigit()
