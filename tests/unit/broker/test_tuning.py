from __future__ import annotations

import pytest

from appliance.broker.tuning import (
    MAX_MAXMEMORY,
    MIN_MAXMEMORY,
    Plan,
    UnsafePolicyError,
    check_policy,
    parse_size,
    recommended_maxmemory,
)


@pytest.mark.parametrize(
    ("text", "size"),
    [("256mb", 256 * 1024**2), ("2gb", 2 * 1024**3), ("1048576", 1048576), ("512K", 512 * 1024)],
)
def test_sizes(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize(
    "policy",
    [
        "allkeys-lru",
        "allkeys-lfu",
        "allkeys-random",
        "volatile-lru",
        "volatile-ttl",
        "volatile-random",
        "volatile-lfu",
    ],
)
def test_every_evicting_policy_is_refused_with_the_reason(policy: str) -> None:
    with pytest.raises(UnsafePolicyError, match="lost task"):
        check_policy(policy)


def test_maxmemory_leaves_headroom_for_a_fork() -> None:
    assert recommended_maxmemory(16 * 1024**3) == 4 * 1024**3
    assert recommended_maxmemory(10 * 1024**2) == MIN_MAXMEMORY
    assert recommended_maxmemory(256 * 1024**3) == MAX_MAXMEMORY


def test_plan_is_noeviction_with_aof_every_second() -> None:
    settings = Plan(maxmemory=1024).settings()
    assert settings == {
        "maxmemory": "1024",
        "maxmemory-policy": "noeviction",
        "appendonly": "yes",
        "appendfsync": "everysec",
    }
    assert "maxmemory-policy noeviction" in Plan(maxmemory=1024).snippet()
