"""Queue checks: depth and age of each queue, and the messages delivered but not acked."""

from __future__ import annotations

import json
from typing import Any

from appliance.core import constants as C
from appliance.core import keys
from appliance.health.config import HealthConfig
from appliance.health.resp import Resp
from appliance.health.verdict import OK, Check, measured


def _enqueued_at(raw: bytes | None) -> float | None:
    if not raw:
        return None
    try:
        message = json.loads(raw)
        return float(message["headers"][C.ENQUEUED_AT_HEADER])
    except (ValueError, KeyError, TypeError):
        return None


def queue_stats(conn: Resp, queues: list[str], now: float) -> list[dict[str, Any]]:
    """Per queue: depth over all priority sub-queues, depth per priority, oldest age (s)."""
    commands: list[list[Any]] = []
    for queue in queues:
        for key in keys.queue_keys(queue):
            commands += [["LLEN", key], ["LINDEX", key, -1]]
    replies = conn.pipeline(commands)
    stats = []
    per_queue = 2 * len(keys.PRIORITY_STEPS)
    for i, queue in enumerate(queues):
        chunk = replies[i * per_queue : (i + 1) * per_queue]
        stamps = [t for t in (_enqueued_at(raw) for raw in chunk[1::2]) if t is not None]
        stats.append(
            {
                "queue": queue,
                "depth": sum(chunk[0::2]),
                "by_priority": dict(zip(keys.PRIORITY_STEPS, chunk[0::2], strict=True)),
                "oldest_age": max(0.0, now - min(stamps)) if stamps else 0.0,
            }
        )
    return stats


def unacked_stats(conn: Resp, now: float) -> dict[str, Any]:
    """Messages taken by workers but not acknowledged, and how long the oldest has been out."""
    commands: list[list[Any]] = [
        ["HLEN", keys.UNACKED_KEY],
        ["ZRANGE", keys.UNACKED_INDEX_KEY, 0, 0, "WITHSCORES"],
    ]
    count, oldest = conn.pipeline(commands)
    return {"count": count, "oldest_age": max(0.0, now - float(oldest[1])) if oldest else 0.0}


def check_queues(cfg: HealthConfig, conn: Resp, now: float) -> list[Check]:
    """Depth (all priority sub-queues) and the oldest waiting message's age, per queue."""
    checks = []
    for stat in queue_stats(conn, cfg.queues, now):
        queue = stat["queue"]
        checks.append(
            measured(
                f"queue_{queue}_depth",
                stat["depth"],
                "",
                cfg.threshold("queue_depth"),
                f"queue {queue}: depth",
            )
        )
        checks.append(
            measured(
                f"queue_{queue}_age",
                stat["oldest_age"],
                "s",
                cfg.threshold("queue_age"),
                f"queue {queue}: oldest waiting",
            )
        )
    return checks


def check_unacked(cfg: HealthConfig, conn: Resp, now: float) -> list[Check]:
    """Unacked count, and the oldest unacked age against the visibility timeout."""
    stats = unacked_stats(conn, now)
    aged = measured(
        "unacked_age", stats["oldest_age"], "s", cfg.threshold("unacked_age"), "oldest unacked"
    )
    aged.message += f" (visibility timeout {cfg.visibility_timeout}s)"
    aged.maximum = cfg.visibility_timeout
    return [Check("unacked", OK, f"{stats['count']} unacked", stats["count"]), aged]
