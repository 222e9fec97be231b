"""One active beat across hosts: the Redis lease, takeover after kill -9, systemd notify."""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path

import pytest

from appliance.broker.lease import Lease
from appliance.core import constants as C
from appliance.core import keys
from tests.helpers.notify import NotifyPeer
from tests.helpers.processes import ApplianceProcess, wait_until
from tests.helpers.redis_server import RedisServer
from tests.integration.beat_tasks import EVERY_SECOND, INTERVAL

REPO_ROOT = Path(__file__).resolve().parents[3]
LEASE_TTL = 3


# The lease primitive on a real Redis ---------------------------------------------------


def test_one_token_holds_the_lease_and_only_it_renews_or_releases(
    clean_redis: RedisServer,
) -> None:
    client = clean_redis.client()
    first, second = (Lease(client, keys.BEAT_LEASE_KEY, ttl=5) for _ in range(2))

    assert first.acquire()
    assert not second.acquire()
    assert not second.renew()
    assert not second.release()
    assert first.renew()
    assert 4 < (second.remaining() or 0) <= 5
    assert first.release()
    assert second.hold()
    assert client.get(keys.BEAT_LEASE_KEY) == second.token.encode()


def test_an_expired_lease_goes_to_the_next_taker_and_fences_the_old_holder(
    clean_redis: RedisServer,
) -> None:
    client = clean_redis.client()
    old, new = (
        Lease(client, keys.BEAT_LEASE_KEY, ttl=0.3),
        Lease(client, keys.BEAT_LEASE_KEY, ttl=5),
    )
    assert old.acquire()
    assert old.hset_if_held(keys.BEAT_LAST_RUN_KEY, "entry", "1.0")

    wait_until(new.acquire, 5, "the expired lease to be taken")

    assert not old.renew()
    assert not old.hset_if_held(keys.BEAT_LAST_RUN_KEY, "entry", "2.0")
    assert client.hget(keys.BEAT_LAST_RUN_KEY, "entry") == b"1.0"
    assert not old.release()
    assert client.get(keys.BEAT_LEASE_KEY) == new.token.encode()


# Real `appliance beat` processes -------------------------------------------------------


@pytest.fixture
def beat_env(appliance_env: dict[str, str], tmp_path: Path) -> dict[str, str]:
    """Beat with a short lease and an entry every second; no worker, so messages stay queued."""
    pythonpath = os.pathsep.join(filter(None, [str(REPO_ROOT), appliance_env.get("PYTHONPATH")]))
    return {
        **appliance_env,
        "APPLIANCE_BEAT_LEASE_TTL": str(LEASE_TTL),
        "APPLIANCE_TASK_MODULES": "tests.integration.beat_tasks",
        "PYTHONPATH": pythonpath,
    }


def _start_beat(env: dict[str, str], tmp_path: Path, name: str) -> ApplianceProcess:
    # Each beat gets its own state dir, as on its own host.
    host_env = {**env, "APPLIANCE_STATE_DIR": str(tmp_path / f"host-{name}")}
    return ApplianceProcess(["beat"], host_env, tmp_path / f"beat-{name}.log")


def _sent(redis_server: RedisServer) -> list[float]:
    """When each run of the every-second entry was published (its enqueued_at header)."""
    messages = [json.loads(raw) for raw in redis_server.client().lrange("default", 0, -1)]
    return sorted(
        m["headers"][C.ENQUEUED_AT_HEADER] for m in messages if m["headers"]["task"] == "demo.noop"
    )


def _leader_pid(redis_server: RedisServer) -> int | None:
    raw = redis_server.client().get(keys.BEAT_TICK_KEY)
    return int(json.loads(raw)["pid"]) if raw else None


def test_two_beats_one_sends_and_the_other_takes_over_after_kill_9(
    beat_env: dict[str, str], clean_redis: RedisServer, tmp_path: Path
) -> None:
    first = _start_beat(beat_env, tmp_path, "a")
    second: ApplianceProcess | None = None
    try:
        wait_until(lambda: _leader_pid(clean_redis) == first.pid, 60, "the first beat to lead")
        second = _start_beat(beat_env, tmp_path, "b")
        second.wait_for_output("standing by", timeout=60)
        seen = len(_sent(clean_redis))
        wait_until(lambda: len(_sent(clean_redis)) >= seen + 3, 10, "three more runs")

        assert "Sending due task" in first.output()
        assert "Sending due task" not in second.output(), "the standby sent something"
        assert _leader_pid(clean_redis) == first.pid

        killed_at = time.time()
        first.kill()  # SIGKILL to its process group: no release, the lease must expire
        after = wait_until(
            lambda: [t for t in _sent(clean_redis) if t > killed_at],
            LEASE_TTL + 5,
            "a run sent by the second beat",
        )
        takeover = after[0] - killed_at
        print(f"takeover after kill -9: {takeover:.2f}s (lease ttl {LEASE_TTL}s)")
        assert takeover <= LEASE_TTL + 0.5
        wait_until(
            lambda: len([t for t in _sent(clean_redis) if t > killed_at]) >= 2, 5, "another run"
        )
        assert _leader_pid(clean_redis) == second.pid
    finally:
        first.kill()
        if second is not None:
            second.terminate(timeout=30)

    sent = _sent(clean_redis)
    gaps = [b - a for a, b in pairwise(sent)]
    print(f"{len(sent)} runs, gaps {min(gaps):.2f}s to {max(gaps):.2f}s")
    assert min(gaps) >= INTERVAL - 0.25, f"a slot was sent twice: {gaps}"
    assert max(gaps) <= LEASE_TTL + INTERVAL + 0.5, f"the overdue run waited: {gaps}"
    assert EVERY_SECOND in second.output()


@pytest.fixture
def notify_peer() -> Iterator[NotifyPeer]:
    # Unix socket paths are limited to about 100 bytes; pytest's tmp_path can be longer.
    with tempfile.TemporaryDirectory(prefix="sd-") as short:
        peer = NotifyPeer(Path(short) / "notify")
        yield peer
        peer.close()


def test_beat_tells_systemd_ready_watchdog_and_stopping_and_hands_back_the_lease(
    appliance_env: dict[str, str],
    clean_redis: RedisServer,
    notify_peer: NotifyPeer,
    tmp_path: Path,
) -> None:
    env = {**appliance_env, "NOTIFY_SOCKET": str(notify_peer.path), "WATCHDOG_USEC": "4000000"}
    beat = ApplianceProcess(["beat"], env, tmp_path / "beat.log")
    try:
        wait_until(lambda: notify_peer.times("READY", "1"), 60, "READY=1")
        wait_until(lambda: len(notify_peer.times("WATCHDOG", "1")) >= 3, 15, "three WATCHDOG=1")
        assert clean_redis.client().get(keys.BEAT_LEASE_KEY) is not None
    finally:
        code = beat.terminate(timeout=30)

    assert code == 0, beat.output()
    pings = notify_peer.times("WATCHDOG", "1")
    # Every WatchdogSec/2 (2 s) plus the tick itself, well inside WatchdogSec (4 s).
    assert max(b - a for a, b in pairwise(pings)) < 2.5
    assert "WatchdogSec/2 (2s) is shorter" in beat.output()
    assert any(s.startswith("leader; next: appliance-") for s in notify_peer.values("STATUS"))
    wait_until(lambda: notify_peer.times("STOPPING", "1"), 5, "STOPPING=1")
    assert clean_redis.client().get(keys.BEAT_LEASE_KEY) is None, "the lease was not released"
