"""The leader scheduler's decisions, on an in-memory Redis: who sends, what is recorded first."""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from appliance.beat.scheduler import LeaderScheduler
from appliance.broker.lease import Lease
from appliance.config.settings import get_settings, load_settings
from appliance.core import constants as C
from appliance.core import keys
from appliance.worker.launch import beat_argv
from appliance.worker.sdnotify import Notifier
from tests.helpers.fake_redis import FakeRedis

HOURLY = "hourly"


class RecordingNotifier(Notifier):
    def __init__(self) -> None:
        super().__init__(address="")
        self.sent: list[tuple[str, ...]] = []

    def send(self, *fields: str) -> bool:
        self.sent.append(fields)
        return True

    def fields(self) -> list[str]:
        return [field for message in self.sent for field in message]


class RecordingScheduler(LeaderScheduler):
    """Sends nothing to a broker: notes each send with the last run Redis held at that moment."""

    producer = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.sent: list[tuple[str, bytes | None]] = []
        super().__init__(*args, **kwargs)

    def apply_entry(self, entry: Any, producer: Any = None) -> None:
        recorded = self._client.hgetall(keys.BEAT_LAST_RUN_KEY).get(entry.name.encode())
        self.sent.append((entry.name, recorded))


Factory = Callable[[], RecordingScheduler]


@pytest.fixture(autouse=True)
def _not_under_systemd(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def fake() -> FakeRedis:
    return FakeRedis()


@pytest.fixture
def notifier() -> RecordingNotifier:
    return RecordingNotifier()


@pytest.fixture
def make_scheduler(
    tmp_path: Path, fake: FakeRedis, notifier: RecordingNotifier
) -> Iterator[Factory]:
    app = Celery("beat-test", set_as_current=False)
    app.conf.update(
        broker_url="memory://",
        timezone="UTC",
        beat_schedule={HOURLY: {"task": "demo.noop", "schedule": 3600.0}},
        # No celery.backend_cleanup entry (daily at 04:00): between 03:00 and 04:00
        # it, not the hourly entry, would be the next one due.
        result_expires=None,
    )
    made: list[RecordingScheduler] = []

    def make() -> RecordingScheduler:
        scheduler = RecordingScheduler(
            app=app,
            schedule_filename=str(tmp_path / f"schedule-{len(made)}"),
            redis_client=fake,
            notifier=notifier,
        )
        made.append(scheduler)
        return scheduler

    yield make
    for scheduler in made:
        scheduler.close()
    app.close()


def _stamp(seconds_ago: float) -> str:
    return repr(time.time() - seconds_ago)


def test_a_standby_sends_nothing_and_wakes_when_the_lease_runs_out(
    make_scheduler: Factory, fake: FakeRedis, notifier: RecordingNotifier
) -> None:
    fake.set(keys.BEAT_LEASE_KEY, "someone-else", px=800)
    fake.hset(keys.BEAT_LAST_RUN_KEY, HOURLY, _stamp(7200))  # due, for whoever leads
    scheduler = make_scheduler()

    interval = scheduler.tick()

    assert scheduler.sent == []
    assert not scheduler.is_leader
    assert 0 < interval <= 0.82
    assert fake.get(keys.BEAT_TICK_KEY) is None
    assert notifier.sent[0][0] == "READY=1"
    assert notifier.sent[0][1].startswith("STATUS=standby")


def test_the_leader_records_a_run_in_redis_before_it_sends_it(
    make_scheduler: Factory, fake: FakeRedis, notifier: RecordingNotifier
) -> None:
    fake.hset(keys.BEAT_LAST_RUN_KEY, HOURLY, _stamp(7200))
    scheduler = make_scheduler()
    before = time.time()

    scheduler.tick()
    scheduler.tick()

    assert scheduler.is_leader
    assert len(scheduler.sent) == 1, "sent once, then not due for an hour"
    name, recorded = scheduler.sent[0]
    assert name == HOURLY and recorded is not None
    assert float(recorded) >= before, "the new run was in Redis when the task was sent"
    tick = json.loads(fake.get(keys.BEAT_TICK_KEY) or b"{}")
    assert tick["next_entry"] == HOURLY
    assert tick["next_due"] == pytest.approx(float(recorded) + 3600, abs=5)
    assert tick["lease_ttl"] == C.DEFAULT_BEAT_LEASE_TTL
    assert tick["leader"] == f"{tick['hostname']} pid {tick['pid']}"
    assert isinstance(tick["last_tick"], float)
    assert "token" not in json.dumps(tick)
    assert any(f.startswith(f"STATUS=leader; next: {HOURLY}") for f in notifier.fields())


def test_a_new_leader_trusts_the_runs_in_redis_over_its_own_stale_file(
    make_scheduler: Factory, fake: FakeRedis
) -> None:
    scheduler = make_scheduler()
    scheduler.schedule[HOURLY].last_run_at = datetime.now().astimezone() - timedelta(hours=5)
    fake.hset(
        keys.BEAT_LAST_RUN_KEY, HOURLY, _stamp(60)
    )  # the previous leader sent it a minute ago

    scheduler.tick()

    assert scheduler.is_leader
    assert scheduler.sent == []


def test_a_run_is_not_sent_when_the_lease_is_gone_at_the_moment_it_is_recorded(
    make_scheduler: Factory, fake: FakeRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The lease expires between this tick's renewal and the record: the fence refuses.
    monkeypatch.setattr(Lease, "hold", lambda self: True)
    fake.set(keys.BEAT_LEASE_KEY, "the-next-leader", px=30_000)
    fake.hset(keys.BEAT_LAST_RUN_KEY, HOURLY, _stamp(7200))
    scheduler = make_scheduler()

    scheduler.tick()

    assert scheduler.sent == []
    assert not scheduler.is_leader
    assert float(fake.hgetall(keys.BEAT_LAST_RUN_KEY)[HOURLY.encode()]) < time.time() - 7000


def test_close_says_stopping_and_releases_only_its_own_lease(
    make_scheduler: Factory, fake: FakeRedis, notifier: RecordingNotifier
) -> None:
    leader = make_scheduler()
    leader.tick()
    standby = make_scheduler()
    standby.tick()
    assert f"STATUS=standby; leader: {socket.gethostname()} pid {os.getpid()}" in notifier.fields()

    standby.close()
    assert fake.get(keys.BEAT_LEASE_KEY) is not None
    leader.close()
    leader.close()  # beat calls it from the signal handler and again on the way out

    assert fake.get(keys.BEAT_LEASE_KEY) is None
    assert notifier.fields().count("STOPPING=1") == 2


def test_the_loop_interval_stays_within_a_third_of_the_lease_and_the_watchdog(
    make_scheduler: Factory,
    notifier: RecordingNotifier,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv("APPLIANCE_BEAT_LEASE_TTL", "3")
    get_settings.cache_clear()
    assert make_scheduler().max_interval == 1

    monkeypatch.setenv("WATCHDOG_USEC", "1000000")
    scheduler = make_scheduler()
    with caplog.at_level(logging.WARNING, logger="appliance.beat"):
        scheduler.tick()
        scheduler.tick()

    assert scheduler.max_interval == 0.5
    assert "WatchdogSec/2 (0.5s) is shorter" in caplog.text
    assert notifier.fields().count("WATCHDOG=1") == 2


def test_no_watchdog_pings_unless_systemd_asks(
    make_scheduler: Factory, notifier: RecordingNotifier
) -> None:
    scheduler = make_scheduler()
    scheduler.tick()
    assert scheduler.max_interval == C.BEAT_MAX_LOOP_INTERVAL
    assert "WATCHDOG=1" not in notifier.fields()


def test_with_redis_down_beat_keeps_ticking_sends_nothing_then_leads_again(
    make_scheduler: Factory, fake: FakeRedis, notifier: RecordingNotifier
) -> None:
    fake.hset(keys.BEAT_LAST_RUN_KEY, HOURLY, _stamp(7200))
    fake.down = True
    scheduler = make_scheduler()

    assert scheduler.tick() == scheduler.max_interval
    assert scheduler.sent == []
    assert "STATUS=Redis unreachable; sending nothing" in notifier.fields()

    fake.down = False
    scheduler.tick()
    assert scheduler.is_leader
    assert [name for name, _ in scheduler.sent] == [HOURLY]


def test_a_lazy_scheduler_touches_no_redis(tmp_path: Path) -> None:
    app = Celery("beat-test", set_as_current=False)
    app.conf.update(broker_url="redis://127.0.0.1:1/0")
    scheduler = LeaderScheduler(app=app, schedule_filename=str(tmp_path / "s"), lazy=True)
    assert scheduler.max_interval <= C.BEAT_MAX_LOOP_INTERVAL
    app.close()


def test_beat_runs_the_leader_scheduler_with_a_short_loop() -> None:
    argv = beat_argv(load_settings())
    assert argv[argv.index("--scheduler") + 1] == "appliance.beat.scheduler:LeaderScheduler"
    assert argv[argv.index("--max-interval") + 1] == str(C.BEAT_MAX_LOOP_INTERVAL)
