"""Redis tuned for a broker: never evict, persist every second, size memory with headroom.

maxmemory formula (the same as scripts/install.sh): 25 % of the host's RAM, at least
256 MiB and at most 8 GiB. An AOF rewrite or RDB save forks Redis, and copy-on-write can,
at worst, double its memory while the child runs; 25 % leaves that doubling plus the
workers and the database on the same host room. More than 8 GiB of queued messages is
an incident to page on, not a size to plan for.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BROKER_POLICY = "noeviction"
MAXMEMORY_FRACTION = 0.25
MIN_MAXMEMORY = 256 * 1024 * 1024
MAX_MAXMEMORY = 8 * 1024**3
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(b|kb|k|mb|m|gb|g)?\s*$", re.IGNORECASE)
_UNITS = {
    None: 1,
    "b": 1,
    "k": 1024,
    "kb": 1024,
    "m": 1024**2,
    "mb": 1024**2,
    "g": 1024**3,
    "gb": 1024**3,
}


class UnsafePolicyError(ValueError):
    """Raised for an eviction policy that can drop queued tasks."""


def parse_size(text: str) -> int:
    """``256mb``, ``1gb``, ``1048576`` -> bytes."""
    match = _SIZE.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a size like 256mb or 2gb")
    unit = match.group(2).lower() if match.group(2) else None
    return int(float(match.group(1)) * _UNITS[unit])


def check_policy(policy: str) -> str:
    """Refuse any policy that evicts keys: an evicted key on a broker is a lost task."""
    if policy.startswith(("allkeys-", "volatile-")):
        raise UnsafePolicyError(
            f"maxmemory-policy {policy} evicts keys, and on a broker an evicted key is a lost "
            "task (kombu #236); use noeviction, so Redis refuses new writes instead"
        )
    if policy != BROKER_POLICY:
        raise UnsafePolicyError(f"unknown maxmemory-policy {policy!r}; use noeviction")
    return policy


def host_memory_bytes() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def recommended_maxmemory(total: int | None = None) -> int:
    total = host_memory_bytes() if total is None else total
    return min(MAX_MAXMEMORY, max(MIN_MAXMEMORY, int(total * MAXMEMORY_FRACTION)))


@dataclass(frozen=True)
class Plan:
    """The CONFIG values the broker should have."""

    maxmemory: int
    policy: str = BROKER_POLICY

    def settings(self) -> dict[str, str]:
        return {
            "maxmemory": str(self.maxmemory),
            "maxmemory-policy": self.policy,
            "appendonly": "yes",
            "appendfsync": "everysec",
        }

    def snippet(self) -> str:
        lines = ["# Celery Appliance: Redis as a broker (appliance redis tune)"]
        lines += [f"{key} {value}" for key, value in self.settings().items()]
        return "\n".join(lines) + "\n"


def current(client: Any) -> dict[str, str]:
    """The broker's current values of the planned settings."""
    values: dict[str, str] = {}
    for key in Plan(0).settings():
        reply = client.config_get(key)
        values[key] = str(reply.get(key, "")) if reply else ""
    return values


def apply(client: Any, plan: Plan) -> tuple[bool, str]:
    """CONFIG SET every value, then CONFIG REWRITE; return (persisted, message)."""
    for key, value in plan.settings().items():
        client.config_set(key, value)
    try:
        client.config_rewrite()
    except Exception as exc:
        return False, f"applied live, but CONFIG REWRITE failed ({exc})"
    return True, "applied live and written to redis.conf (CONFIG REWRITE)"


def host_advice() -> list[str]:
    """Kernel settings Redis asks for, read from /proc and /sys."""
    advice = []

    def read(path: str) -> str | None:
        try:
            return Path(path).read_text().strip()
        except OSError:
            return None

    overcommit = read("/proc/sys/vm/overcommit_memory")
    if overcommit is not None and overcommit != "1":
        advice.append(
            f"vm.overcommit_memory is {overcommit}: a fork for AOF rewrite may fail; "
            "fix: sysctl vm.overcommit_memory=1"
        )
    thp = read("/sys/kernel/mm/transparent_hugepage/enabled")
    if thp is not None and "[always]" in thp:
        advice.append(
            "transparent huge pages are 'always': latency spikes and memory bloat; "
            "fix: echo madvise > /sys/kernel/mm/transparent_hugepage/enabled"
        )
    somaxconn = read("/proc/sys/net/core/somaxconn")
    if somaxconn is not None and somaxconn.isdigit() and int(somaxconn) < 511:
        advice.append(
            f"net.core.somaxconn is {somaxconn}, below Redis's tcp-backlog 511; "
            "fix: sysctl net.core.somaxconn=1024"
        )
    return advice
