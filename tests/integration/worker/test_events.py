"""Celery events from real workers, seen by the real `celery events --dump`.

Given a worker, its nodes always send worker events (online, a heartbeat every 2 s); with
APPLIANCE_TASK_EVENTS=true every task's events too, and with it false `celery control
enable_events` turns them on at run time (and `disable_events` off), on both topologies.
On the consumers topology every consumer is a node of its own (GROUP.N@host) and keeps
beating while it runs a long task.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from itertools import pairwise
from pathlib import Path

import pytest

from tests.helpers.processes import is_node_of, run_cli, wait_until
from tests.integration.conftest import WorkerFactory

pytestmark = pytest.mark.timeout(240)

LINE = re.compile(r"^(?P<node>\S+) \[(?P<at>[^\]]+)\] (?P<what>[a-z ]+?)(?::|$)(?P<rest>.*)$")


def celery(
    env: dict[str, str], *args: str, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Celery's own command line on the appliance's app, with the test settings."""
    return subprocess.run(
        [sys.executable, "-m", "celery", "-A", "appliance.celery_app:app", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


class Dump:
    """A running `celery events --dump` and the events it printed."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.log = log
        self._out = log.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "appliance.celery_app:app", "events", "--dump"],
            env={**env, "PYTHONUNBUFFERED": "1"},
            stdout=self._out,
            stderr=subprocess.STDOUT,
        )

    def events(self) -> list[dict[str, str]]:
        if self.proc.poll() is not None:
            raise AssertionError(f"celery events exited {self.proc.returncode}:\n{self.text()}")
        found = []
        for line in self.text().splitlines():
            match = LINE.match(line)
            if match:
                found.append(match.groupdict())
        return found

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def of(self, task_id: str) -> list[str]:
        """The kinds of task event seen for *task_id* ("task sent", "task succeeded", ...)."""
        return [e["what"] for e in self.events() if task_id in e["rest"]]

    def heartbeats(self) -> list[tuple[str, datetime]]:
        return [
            (e["node"], datetime.fromisoformat(e["at"]))
            for e in self.events()
            if e["what"] == "heartbeat"
        ]

    def wait_for_nodes(self, count: int, group: str = "default") -> set[str]:
        """Until *count* nodes of *group* have beaten: the subscription is live."""

        def nodes() -> set[str] | None:
            seen = {node for node, _ in self.heartbeats() if is_node_of(group, node)}
            return seen if len(seen) >= count else None

        return wait_until(nodes, 30, f"heartbeats of {count} node(s)\n{self.text()}")  # type: ignore[no-any-return]

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._out.close()


@pytest.fixture
def dump(appliance_env: dict[str, str], tmp_path: Path) -> Iterator[Dump]:
    started = Dump(appliance_env, tmp_path / "events.log")
    yield started
    started.close()


def submit_and_wait(env: dict[str, str]) -> str:
    done = run_cli(env, "submit", "demo.add", "--args", "[2, 3]", "--wait", "30")
    assert done.returncode == 0 and done.stdout.strip() == "5", done.stderr
    return done.stderr.split(" as ")[-1].strip()


def test_with_task_events_on_the_dump_shows_each_task_from_sent_to_succeeded(
    appliance_env: dict[str, str], start_worker: WorkerFactory, tmp_path: Path
) -> None:
    """The default topology (consumers): every consumer is a node and sends task events."""
    env = {**appliance_env, "APPLIANCE_TASK_EVENTS": "true"}
    start_worker(env, "-c", "2")
    dump = Dump(env, tmp_path / "events.log")
    try:
        nodes = dump.wait_for_nodes(2)
        assert all(re.match(r"default\.\d@", node) for node in nodes), nodes
        task_id = submit_and_wait(env)
        wait_until(
            lambda: "task succeeded" in dump.of(task_id), 15, f"task-succeeded\n{dump.text()}"
        )
        kinds = dump.of(task_id)
        # task-sent from appliance.submit (task_send_sent_event), the rest from the worker.
        for kind in ("task sent", "task received", "task started", "task succeeded"):
            assert kind in kinds, (kind, dump.text())
        (succeeded,) = [e for e in dump.events() if e["what"] == "task succeeded"]
        assert succeeded["node"] in nodes and "demo.add" in succeeded["rest"]
        assert "result=5" in succeeded["rest"]
    finally:
        dump.close()


@pytest.mark.parametrize(
    ("topology", "nodes"), [("consumers", 2), ("prefork", 1)], ids=["consumers", "prefork"]
)
def test_with_task_events_off_enable_events_turns_them_on_at_run_time(
    appliance_env: dict[str, str],
    start_worker: WorkerFactory,
    dump: Dump,
    topology: str,
    nodes: int,
) -> None:
    start_worker(appliance_env, "-c", "2", "--topology", topology)
    dump.wait_for_nodes(nodes)  # worker events are always on: monitors see every node

    quiet = submit_and_wait(appliance_env)
    enabled = celery(appliance_env, "control", "enable_events", "--timeout", "5")
    assert enabled.returncode == 0, enabled.stdout + enabled.stderr
    assert enabled.stdout.count("task events enabled") == nodes, enabled.stdout
    assert "unavailable" not in enabled.stdout + enabled.stderr

    loud = submit_and_wait(appliance_env)
    wait_until(lambda: "task succeeded" in dump.of(loud), 15, f"task-succeeded\n{dump.text()}")
    assert "task received" in dump.of(loud)
    assert dump.of(quiet) == [], "task events were sent before enable_events"
    # task-sent is the publisher's: its own setting (off) decides, not the workers'.
    assert "task sent" not in dump.of(loud)

    disabled = celery(appliance_env, "control", "disable_events", "--timeout", "5")
    assert disabled.returncode == 0, disabled.stdout + disabled.stderr
    assert disabled.stdout.count("task events disabled") == nodes, disabled.stdout
    after = submit_and_wait(appliance_env)
    beats = len(dump.heartbeats())
    wait_until(lambda: len(dump.heartbeats()) > beats + nodes, 15, "more heartbeats")
    assert dump.of(after) == []


def utc(text: str) -> datetime:
    """An ISO time as aware UTC (records may store naive UTC)."""
    at = datetime.fromisoformat(text)
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def test_a_consumer_running_a_long_task_keeps_its_node_online(
    appliance_env: dict[str, str], start_worker: WorkerFactory, dump: Dump
) -> None:
    """Its event heartbeat comes from a thread: a node missing two beats (4 s) would look
    offline to Flower while it runs the task."""
    start_worker(appliance_env, "-c", "1", "--topology", "consumers")
    (node,) = dump.wait_for_nodes(1)
    done = run_cli(appliance_env, "submit", "demo.sleep", "--args", "[7]", "--wait", "60")
    assert done.returncode == 0, done.stderr
    task_id = done.stderr.split(" as ")[-1].strip()
    record = json.loads(run_cli(appliance_env, "tasks", "show", task_id, "--json").stdout)
    began, ended = utc(record["started_at"]), utc(record["finished_at"])
    assert (ended - began).total_seconds() >= 6.5
    beats = sorted(at for name, at in dump.heartbeats() if name == node and began <= at <= ended)
    window = [began, *beats, ended]
    gap = max((b - a).total_seconds() for a, b in pairwise(window))
    assert gap < 4, f"{node} went {gap:.1f} s without a heartbeat during the task"
