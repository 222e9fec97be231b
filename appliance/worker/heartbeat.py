"""Worker heartbeats: a JSON key per worker node with a TTL, read by the health check."""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass

import redis

from appliance.core import constants as C
from appliance.core import keys


def current_rss_kib() -> int:
    """Resident memory of this process now (not the peak), in KiB."""
    try:
        with open("/proc/self/statm") as handle:
            pages = int(handle.read().split()[1])
    except (OSError, ValueError, IndexError):
        return 0
    return pages * os.sysconf("SC_PAGE_SIZE") // 1024


@dataclass(frozen=True)
class WorkerHeartbeat:
    """What a worker node says about itself every HEARTBEAT_INTERVAL seconds."""

    hostname: str
    pid: int
    group: str
    queues: list[str]
    started_at: float
    updated_at: float
    succeeded: int
    failed: int
    retried: int
    active: int
    reserved: int
    rss_kib: int
    record_write_errors: int
    last_error: str | None
    window_done: int = 0
    window_failed: int = 0
    window_seconds: int = 0
    state: str = "running"

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


def worker_key(hostname: str) -> str:
    return keys.WORKER_HEARTBEAT_KEY.format(hostname=hostname)


def publish(client: redis.Redis, beat: WorkerHeartbeat, ttl: int = C.HEARTBEAT_TTL) -> None:
    """Write the heartbeat with its TTL (a node that stops writing disappears)."""
    client.set(worker_key(beat.hostname), beat.to_json(), ex=ttl)


def remove(client: redis.Redis, hostname: str) -> None:
    client.delete(worker_key(hostname))


def now() -> float:
    return time.time()
