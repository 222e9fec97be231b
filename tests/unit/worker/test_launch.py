"""How `appliance worker`/`beat` translate settings and flags into Celery arguments."""

from __future__ import annotations

import pytest

from appliance.config.settings import load_settings
from appliance.errors import ConfigError
from appliance.worker.launch import WorkerOptions, beat_argv, worker_argv


def _opt(argv: list[str], name: str) -> str | None:
    return argv[argv.index(name) + 1] if name in argv else None


def test_group_queues_and_recycling_come_from_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APPLIANCE_QUEUES", "default,urgent")
    monkeypatch.setenv("APPLIANCE_WORKER_GROUPS", "default=default;urgent=urgent")
    monkeypatch.setenv("APPLIANCE_MAX_TASKS_PER_CHILD", "50")
    monkeypatch.setenv("APPLIANCE_MAX_MEMORY_PER_CHILD", "200000")
    argv = worker_argv(load_settings(), WorkerOptions(group="urgent"))
    assert _opt(argv, "--queues") == "urgent"
    assert _opt(argv, "--hostname") == "urgent@%h"
    assert _opt(argv, "--max-tasks-per-child") == "50"
    assert _opt(argv, "--max-memory-per-child") == "200000"


def test_flags_override_settings() -> None:
    options = WorkerOptions(
        queues=("high",),
        concurrency=3,
        max_tasks_per_child=0,
        max_memory_per_child=1000,
        loglevel="DEBUG",
    )
    argv = worker_argv(load_settings(), options)
    assert _opt(argv, "--queues") == "high"
    assert _opt(argv, "--concurrency") == "3"
    assert "--max-tasks-per-child" not in argv  # 0 = never recycle by count
    assert _opt(argv, "--max-memory-per-child") == "1000"
    assert _opt(argv, "--loglevel") == "DEBUG"


def test_unknown_queue_or_group_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="nosuch"):
        worker_argv(load_settings(), WorkerOptions(queues=("nosuch",)))
    with pytest.raises(ConfigError, match="APPLIANCE_WORKER_GROUPS"):
        worker_argv(load_settings(), WorkerOptions(group="nosuch"))


def _events_step(argv: list[str], task_events_setting: bool) -> tuple[bool, object]:
    """How Celery's Events bootstep comes up for a worker started with *argv*: enabled, and
    the groups it sends (None: all, task events included)."""
    from types import SimpleNamespace

    from celery import Celery
    from celery.bin.worker import worker
    from celery.worker.consumer.events import Events

    app = Celery("t", set_as_current=False)
    params = worker.make_context("worker", argv[1:], obj=SimpleNamespace(app=app)).params
    step = Events(
        SimpleNamespace(),
        # Not given on the command line: the worker takes worker_send_task_events.
        task_events=params["task_events"] or task_events_setting,
        without_heartbeat=params["without_heartbeat"],
        without_gossip=params["without_gossip"],
    )
    return step.enabled, step.groups


@pytest.mark.parametrize("consumer", [None, 0], ids=["prefork", "consumer"])
def test_the_events_step_runs_with_worker_events_when_task_events_are_off(
    consumer: int | None,
) -> None:
    """So `celery control enable_events` finds a dispatcher, and monitors see the nodes."""
    argv = worker_argv(load_settings(), WorkerOptions(), consumer=consumer)
    assert "--without-heartbeat" not in argv  # Celery's event heartbeat keeps the step on
    assert {"--without-gossip", "--without-mingle"} <= set(argv)
    assert "--task-events" not in argv
    assert _events_step(argv, task_events_setting=False) == (True, ["worker"])


@pytest.mark.parametrize("consumer", [None, 0], ids=["prefork", "consumer"])
def test_task_events_setting_turns_on_every_event(
    monkeypatch: pytest.MonkeyPatch, consumer: int | None
) -> None:
    monkeypatch.setenv("APPLIANCE_TASK_EVENTS", "true")
    argv = worker_argv(load_settings(), WorkerOptions(), consumer=consumer)
    assert "--task-events" in argv
    assert {"--without-gossip", "--without-mingle"} <= set(argv)
    assert _events_step(argv, task_events_setting=True) == (True, None)


def test_beat_keeps_its_schedule_in_the_state_dir() -> None:
    settings = load_settings()
    assert _opt(beat_argv(settings), "--schedule") == str(settings.state_dir / "beat-schedule")


def test_start_celery_returns_the_command_exit_code() -> None:
    """Celery's app.start() drops a worker's exit code; start_celery keeps it."""
    from celery import Celery
    from celery.bin.celery import celery
    from click import command, pass_context

    from appliance.worker.launch import start_celery

    @command("stops")
    @pass_context
    def stops(ctx: object) -> None:
        # What `celery worker` does after an unrecoverable error.
        ctx.exit(1)  # type: ignore[attr-defined]

    @command("returns")
    def returns() -> int:
        return 3

    celery.add_command(stops)
    celery.add_command(returns)
    try:
        app = Celery("t", set_as_current=False)
        assert start_celery(app, ["stops"]) == 1
        assert start_celery(app, ["returns"]) == 3
        assert app.start(argv=["stops"]) is None  # the bug worked around: the 1 is dropped
    finally:
        celery.commands.pop("stops")
        celery.commands.pop("returns")


def test_broker_progress_judges_only_a_brpop_that_is_out() -> None:
    """All prefetch slots busy (long tasks, or ack-and-fetch under load) means no BRPOP is
    out: its old send time must not withhold the watchdog ping."""
    from types import SimpleNamespace

    from appliance.worker.supervision import BRPOP_GRACE_SECONDS, broker_progressing

    def consumer(in_poll: object, sent_at: float | None) -> SimpleNamespace:
        channel = SimpleNamespace(_in_poll=in_poll, _brpop_sent_at=sent_at, brpop_timeout=1)
        cycle = SimpleNamespace(_channels=[channel])
        return SimpleNamespace(
            connection=SimpleNamespace(connected=True, transport=SimpleNamespace(cycle=cycle))
        )

    overdue = 100.0 - 1 - BRPOP_GRACE_SECONDS - 0.5
    assert broker_progressing(consumer(None, overdue), now=100.0)
    assert not broker_progressing(consumer(object(), overdue), now=100.0)
    assert broker_progressing(consumer(object(), 99.0), now=100.0)


def test_a_worker_whose_shutdown_hangs_after_the_pool_stopped_exits_70() -> None:
    """The last resort armed when the pool has stopped: a process still alive at the
    deadline exits with SHUTDOWN_HUNG (so systemd/supervisord restart it)."""
    import subprocess
    import sys
    import time

    from appliance.core.exitcodes import SHUTDOWN_HUNG

    code = (
        "import logging, time\n"
        "logging.basicConfig()\n"
        "from appliance.worker.prefork.pool import _exit_unless_done_within\n"
        "_exit_unless_done_within(0.3)\n"
        "time.sleep(60)  # a shutdown step that never returns\n"
    )
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert done.returncode == SHUTDOWN_HUNG == 70, done.stderr
    assert time.monotonic() - started < 20
    assert "worker shutdown still not done" in done.stderr
