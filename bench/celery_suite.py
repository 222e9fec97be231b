"""Celery's own integration suite against an external worker: the appliance vs stock Celery.

Run by scripts/celery-suite.sh (`make celery-suite`), which sets up the scratch venv and
the extracted Celery sdist and passes --sdist. For each contender and each test file:

1. one private redis-server (ephemeral loopback port, no persistence) serves the whole run;
   broker on db 0, results on db 1, both flushed before every file;
2. the contender's worker starts outside pytest, with 2 worker processes:
   - control             stock `celery -A celery_suite_control worker -P prefork -c 2`, an app
                         the harness writes: t.integration.tasks plus the suite's celery_config
   - appliance           `appliance worker -c 2`, APPLIANCE_WORKER_TOPOLOGY=consumers (the
                         default): the production profile, records in a throwaway SQLite file
   - appliance-prefork   the same with APPLIANCE_WORKER_TOPOLOGY=prefork
   both load t.integration.tasks (and the suite's class-based task) from the sdist root;
3. pytest runs the file from the sdist root (its pyproject is the config) with a plugin the
   harness writes (`-p celery_suite_plugin`) whose celery_session_worker starts no worker,
   TEST_BROKER/TEST_BACKEND/REDIS_HOST/REDIS_PORT pointing at the private redis-server, and
   --junitxml; the suite's own timeout markers stand, --test-timeout covers the rest, and
   --file-timeout interrupts a file (SIGINT, so the junitxml still gets written);
4. the per-test outcomes are compared: counts per contender and the tests that pass on the
   control but not on an appliance contender, with the first line of the failure.

Every process it starts is stopped on exit, Ctrl-C and SIGTERM included. Results (junitxml,
worker and pytest logs, summary.json) go to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.helpers.redis_server import RedisServer, local_redis_server  # noqa: E402

VENV_BIN = Path(sys.executable).parent
CONTENDERS = ("control", "appliance", "appliance-prefork")
DEFAULT_FILES = ("test_redis_backend.py", "test_tasks.py", "test_canvas.py")

# Registers the suite's class-based task (conftest's celery_class_tasks) in the worker.
EXTRA_MODULE = '''"""Written by bench/celery_suite.py: the suite's class-based task."""

from celery._state import _get_active_apps, connect_on_app_finalize

from t.integration.tasks import ClassBasedAutoRetryTask


def _register(app):
    return app.register_task(ClassBasedAutoRetryTask())


connect_on_app_finalize(_register)
for _app in list(_get_active_apps()):
    _register(_app)
'''

# The control: stock Celery with the suite's celery_config (t/integration/conftest.py).
CONTROL_MODULE = '''"""Written by bench/celery_suite.py: stock Celery, the suite's config."""

import os

from celery import Celery

app = Celery("control", include=["t.integration.tasks", "celery_suite_extra"])
app.conf.update(
    broker_url=os.environ["TEST_BROKER"],
    result_backend=os.environ["TEST_BACKEND"],
    result_extended=True,
    task_create_missing_queues=False,
)
'''

# Replaces celery.contrib.pytest's celery_session_worker before t/integration/conftest.py
# imports it and before pytest registers celery.contrib.pytest as a plugin (`-p`, as
# pytest-celery does in Celery's own CI: its other fixtures and the celery marker): the
# same task registration on the session app, no in-process worker.
PLUGIN_MODULE = '''"""Written by bench/celery_suite.py: the worker is external; start none."""

import pytest

import celery.contrib.pytest as celery_pytest


@pytest.fixture(scope="session")
def celery_session_worker(celery_session_app, celery_includes, celery_class_tasks):
    """The original's task registration on the session app; the worker runs outside."""
    for module in celery_includes:
        celery_session_app.loader.import_task_module(module)
    for class_task in celery_class_tasks:
        celery_session_app.register_task(class_task)
    return None


celery_pytest.celery_session_worker = celery_session_worker

'''


@dataclass
class FileRun:
    contender: str
    file: str
    outcomes: dict[str, str] = field(default_factory=dict)  # test id -> passed/failed/skipped
    messages: dict[str, str] = field(default_factory=dict)  # test id -> first line
    seconds: float = 0.0
    note: str = ""  # "timed out", "worker died", ...


class Stop(Exception):
    """SIGTERM: unwind and stop everything, as Ctrl-C does."""


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise Stop()


def write_modules(workdir: Path) -> Path:
    mods = workdir / "modules"
    mods.mkdir(parents=True, exist_ok=True)
    (mods / "celery_suite_extra.py").write_text(EXTRA_MODULE)
    (mods / "celery_suite_control.py").write_text(CONTROL_MODULE)
    (mods / "celery_suite_plugin.py").write_text(PLUGIN_MODULE)
    return mods


def common_env(server: RedisServer, sdist: Path, mods: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("APPLIANCE_", "CELERY_"))}
    env.update(
        PYTHONPATH=os.pathsep.join([str(sdist), str(mods)]),
        TEST_BROKER=server.broker_url,
        TEST_BACKEND=server.backend_url,
        REDIS_HOST=server.host,
        REDIS_PORT=str(server.port),
        PYTHONUNBUFFERED="1",
    )
    return env


def worker_command(
    contender: str, env: dict[str, str], server: RedisServer, workdir: Path, concurrency: int
) -> tuple[list[str], dict[str, str]]:
    if contender == "control":
        argv = [str(VENV_BIN / "celery"), "-A", "celery_suite_control", "worker"]
        argv += ["-P", "prefork", "-c", str(concurrency), "-l", "info"]
        return argv, env
    state = workdir / "state"
    state.mkdir(parents=True, exist_ok=True)
    (workdir / "empty.env").write_text("")
    topology = "prefork" if contender == "appliance-prefork" else "consumers"
    env = dict(
        env,
        APPLIANCE_BROKER_URL=server.broker_url,
        APPLIANCE_RESULT_BACKEND=server.backend_url,
        APPLIANCE_STATE_DIR=str(state),
        APPLIANCE_ENV_FILE=str(workdir / "empty.env"),
        APPLIANCE_DATABASE_URL=f"sqlite:///{workdir / 'records.db'}",
        APPLIANCE_TASK_MODULES="t.integration.tasks,celery_suite_extra",
        APPLIANCE_WORKER_TOPOLOGY=topology,
        APPLIANCE_LOG_LEVEL="info",
    )
    return [str(VENV_BIN / "appliance"), "worker", "-c", str(concurrency)], env


def _stop_group(proc: subprocess.Popen[bytes], grace: float) -> None:
    if proc.poll() is None:
        with suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        with suppress(subprocess.TimeoutExpired):
            proc.wait(grace)
    with suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _ping(server: RedisServer) -> int:
    from celery import Celery

    client = Celery("celery-suite-ping", broker=server.broker_url)
    try:
        return len(client.control.ping(timeout=1.0))
    finally:
        client.close()


@contextmanager
def running_worker(
    argv: list[str], env: dict[str, str], log: Path, server: RedisServer
) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        proc = subprocess.Popen(
            argv, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            deadline = time.monotonic() + 90
            while not _ping(server):
                if proc.poll() is not None:
                    tail = log.read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"worker exited with {proc.returncode}:\n{tail}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"worker did not answer ping within 90 s (see {log})")
            yield proc
        finally:
            _stop_group(proc, 30)


def parse_junit(path: Path, run: FileRun) -> None:
    if not path.exists():
        return
    for case in ET.parse(path).getroot().iter("testcase"):
        test = f"{case.get('classname', '')}::{case.get('name', '')}"
        outcome, message = "passed", ""
        for child in case:
            if child.tag in ("failure", "error"):
                outcome, message = "failed", child.get("message") or child.text or ""
                break
            if child.tag == "skipped":
                outcome, message = "skipped", child.get("message") or ""
        if run.outcomes.get(test) == "failed":  # a teardown error after a pass: keep failed
            continue
        run.outcomes[test] = outcome
        if message:
            lines = message.strip().splitlines()
            run.messages[test] = lines[0][:200] if lines else ""


def run_file(
    contender: str,
    file: str,
    args: argparse.Namespace,
    server: RedisServer,
    mods: Path,
    out: Path,
) -> FileRun:
    run = FileRun(contender, file)
    stem = f"{contender}-{Path(file).stem}"
    workdir = out / "work" / stem
    workdir.mkdir(parents=True, exist_ok=True)
    server.flush()
    env = common_env(server, args.sdist, mods)
    argv, wenv = worker_command(contender, env, server, workdir, args.concurrency)
    junit = out / f"{stem}.xml"
    junit.unlink(missing_ok=True)
    pytest_argv = [sys.executable, "-m", "pytest", f"t/integration/{file}",
                   "-p", "celery_suite_plugin", "-p", "celery.contrib.pytest",
                   "-p", "no:cacheprovider", f"--junitxml={junit}", "-o", "junit_family=xunit1",
                   f"--timeout={args.test_timeout}", "-q", "-rfE"]  # fmt: skip
    if args.k:
        pytest_argv += ["-k", args.k]
    started = time.monotonic()
    print(f"== {contender}: {file}", flush=True)
    with running_worker(argv, wenv, out / f"{stem}.worker.log", server) as worker:
        with (out / f"{stem}.pytest.log").open("wb") as log:
            tester = subprocess.Popen(
                pytest_argv, cwd=args.sdist, env=env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
            try:
                tester.wait(args.file_timeout)
            except subprocess.TimeoutExpired:
                run.note = f"timed out after {args.file_timeout:g} s"
                with suppress(ProcessLookupError):
                    os.killpg(tester.pid, signal.SIGINT)
                with suppress(subprocess.TimeoutExpired):
                    tester.wait(60)
            finally:
                if tester.poll() is None:
                    with suppress(ProcessLookupError):
                        os.killpg(tester.pid, signal.SIGKILL)
                    tester.wait()
        if worker.poll() is not None:
            run.note = (run.note + "; " if run.note else "") + f"worker exited {worker.returncode}"
    run.seconds = time.monotonic() - started
    parse_junit(junit, run)
    counts = _counts([run])
    print(f"   {_fmt(counts)} in {run.seconds:.0f} s {run.note}".rstrip(), flush=True)
    return run


def _counts(runs: list[FileRun]) -> dict[str, int]:
    counts = {"passed": 0, "failed": 0, "skipped": 0}
    for run in runs:
        for outcome in run.outcomes.values():
            counts[outcome] += 1
    return counts


def _fmt(counts: dict[str, int]) -> str:
    return f"{counts['passed']} passed, {counts['failed']} failed, {counts['skipped']} skipped"


def report(runs: list[FileRun], contenders: list[str], files: list[str]) -> dict[str, object]:
    by = {(r.contender, r.file): r for r in runs}
    width = max(len(f) for f in files) + 2
    header = f"{'file':<{width}}" + "".join(f"{c:>26}" for c in contenders)
    print("\n" + header)
    print("-" * len(header))
    for file in [*files, "total"]:
        row = f"{file:<{width}}"
        for c in contenders:
            picked = [by[(c, f)] for f in files if (c, f) in by and file in (f, "total")]
            if not picked:
                row += f"{'-':>26}"
                continue
            n = _counts(picked)
            cell = f"{n['passed']}/{n['failed']}/{n['skipped']}"
            if any(r.note for r in picked):
                cell += " *"
            row += f"{cell:>26}"
        print(row)
    print("(passed/failed/skipped; * = see notes)")
    for r in runs:
        if r.note:
            print(f"note: {r.contender} {r.file}: {r.note}")
    differences: dict[str, list[dict[str, str]]] = {}
    for c in contenders:
        if c == "control":
            continue
        diff: list[dict[str, str]] = []
        for f in files:
            control, mine = by.get(("control", f)), by.get((c, f))
            if control is None or mine is None:
                continue
            for test, outcome in control.outcomes.items():
                if outcome == "passed" and mine.outcomes.get(test) != "passed":
                    diff.append(
                        {
                            "test": test,
                            "outcome": mine.outcomes.get(test, "not run"),
                            "message": mine.messages.get(test, ""),
                        }
                    )
        differences[c] = diff
        print(f"\npassed on control, not on {c}: {len(diff)}")
        for d in diff:
            print(f"  {d['test']} [{d['outcome']}] {d['message']}")
    return {
        "runs": [
            {"contender": r.contender, "file": r.file, "counts": _counts([r]),
             "seconds": round(r.seconds), "note": r.note, "outcomes": r.outcomes,
             "messages": r.messages}
            for r in runs
        ],
        "differences": differences,
    }  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sdist", type=Path, required=True, help="the extracted Celery sdist")
    parser.add_argument("--contenders", default=",".join(CONTENDERS), help="comma list")
    parser.add_argument("--files", default=",".join(DEFAULT_FILES), help="t/integration files")
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument(
        "--test-timeout",
        type=float,
        default=300,
        help="pytest-timeout for tests without the suite's own marker (s)",
    )
    parser.add_argument(
        "--file-timeout", type=float, default=1800, help="interrupt a test file after this long (s)"
    )
    parser.add_argument("-k", help="pytest -k expression")
    parser.add_argument("--out", type=Path, default=REPO / ".cache" / "celery-suite" / "results")
    args = parser.parse_args()  # fmt: skip
    args.sdist = args.sdist.resolve()
    contenders = [c for c in args.contenders.split(",") if c]
    unknown = [c for c in contenders if c not in CONTENDERS]
    if unknown:
        parser.error(f"unknown contenders {unknown}; choose from {', '.join(CONTENDERS)}")
    files = [f for f in args.files.split(",") if f]
    missing = [f for f in files if not (args.sdist / "t" / "integration" / f).is_file()]
    if missing:
        parser.error(f"not in {args.sdist}/t/integration: {missing}")
    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGTERM, _on_sigterm)
    mods = write_modules(out)
    runs: list[FileRun] = []
    try:
        with local_redis_server(out / "redis") as (server, _proc):
            print(f"redis-server on 127.0.0.1:{server.port}", flush=True)
            for file in files:  # file by file: an interrupted run still compares pairs
                for contender in contenders:
                    runs.append(run_file(contender, file, args, server, mods, out))
    except (KeyboardInterrupt, Stop):
        print("\ninterrupted: reporting what finished", flush=True)
    summary = report(runs, contenders, files)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"\nresults in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
