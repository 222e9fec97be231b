"""Queue checks: depth and age of each queue, the messages delivered but not acked, and
queue lists that no worker group consumes."""

from __future__ import annotations

import json
import re
from typing import Any

from appliance.core import constants as C
from appliance.core import keys
from appliance.health.config import HealthConfig
from appliance.health.resp import Resp, RespError, scan
from appliance.health.verdict import OK, WARNING, Check, measured


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


# Lists of Celery's own machinery, bound like queues but never meant for a worker group:
# remote-control queues and their replies (``*.pidbox``; orphans: check_pidbox) and
# event queues (``celeryev.*``).
_INTERNAL_QUEUE = re.compile(r"(\.pidbox$)|(^celeryev\.)")


def binding_queue(member: bytes | str) -> str | None:
    """The queue of one member of kombu's ``_kombu.binding.<exchange>`` set
    (``routing_key\\x06\\x16pattern\\x06\\x16queue``), or None for anything else."""
    text = member.decode(errors="replace") if isinstance(member, bytes) else member
    parts = text.split(keys.KOMBU_BINDING_SEP)
    return parts[2] if len(parts) == 3 and parts[2] else None


def _replies(conn: Resp, commands: list[list[Any]], default: Any) -> list[Any]:
    """One pipeline; should a key hold another type (WRONGTYPE: not kombu's), each command
    again alone, with *default* for those Redis refuses."""
    try:
        return conn.pipeline(commands)
    except RespError:
        replies = []
        for command in commands:
            try:
                replies.append(conn.call(*command))
            except RespError:
                replies.append(default)
        return replies


def kombu_queues(conn: Resp) -> list[str]:
    """The queues kombu has bound to an exchange on this broker (any producer's or
    worker's declaration), Celery's own remote-control and event queues left out."""
    names = scan(conn, keys.KOMBU_BINDING_PATTERN, count=1000)
    if not names:
        return []
    found: set[str] = set()
    for members in _replies(conn, [["SMEMBERS", name] for name in names], []):
        found.update(q for q in map(binding_queue, members or []) if q)
    return sorted(q for q in found if not _INTERNAL_QUEUE.search(q))


def consuming_groups(
    groups: dict[str, list[str]], beats: list[dict[str, Any]]
) -> dict[str, list[str]]:
    """queue -> the worker groups that consume it: those of APPLIANCE_WORKER_GROUPS, and
    those of live heartbeats (a worker started with its own ``-Q``)."""
    consumers: dict[str, list[str]] = {}
    pairs = [(group, queue) for group, queues in groups.items() for queue in queues]
    for beat in beats:
        beat_queues = beat.get("queues")
        if isinstance(beat_queues, list):
            pairs += [(str(beat.get("group") or "?"), str(queue)) for queue in beat_queues]
    for group, queue in pairs:
        if group not in consumers.setdefault(queue, []):
            consumers[queue].append(group)
    return consumers


def unconsumed_queues(
    conn: Resp,
    queues: list[str],
    groups: dict[str, list[str]],
    beats: list[dict[str, Any]],
) -> list[dict[str, Any]]:
    """Non-empty queue lists (configured in *queues*, or bound by kombu) that no worker
    group consumes: queue, depth (all priority sub-queues), by_priority, configured."""
    consumed = consuming_groups(groups, beats)
    candidates = [q for q in dict.fromkeys([*queues, *kombu_queues(conn)]) if q not in consumed]
    if not candidates:
        return []
    commands = [["LLEN", key] for queue in candidates for key in keys.queue_keys(queue)]
    lengths = _replies(conn, commands, 0)
    steps = len(keys.PRIORITY_STEPS)
    found = []
    for i, queue in enumerate(candidates):
        chunk = [int(n or 0) for n in lengths[i * steps : (i + 1) * steps]]
        if sum(chunk):
            found.append(
                {
                    "queue": queue,
                    "depth": sum(chunk),
                    "by_priority": dict(zip(keys.PRIORITY_STEPS, chunk, strict=True)),
                    "configured": queue in queues,
                }
            )
    return found


def unconsumed_message(
    entry: dict[str, Any], queues: list[str], groups: dict[str, list[str]]
) -> str:
    """One line: which queue waits for nobody, and the settings that make a group consume it."""
    queue = entry["queue"]
    group = "default" if "default" in groups or not groups else next(iter(groups))
    example = f"{group}={','.join([*groups.get(group, []), queue])}"
    fix = f"add it to APPLIANCE_WORKER_GROUPS (e.g. {example})"
    if not entry["configured"]:
        fix += f" and to APPLIANCE_QUEUES ({','.join([*queues, queue])})"
    return (
        f"queue {queue!r} has {entry['depth']} message(s) and no worker group consumes it; "
        f"fix: {fix}, then restart appliance-worker@{group}"
    )


def check_unconsumed(cfg: HealthConfig, conn: Resp, beats: list[dict[str, Any]]) -> list[Check]:
    """WARNING for each non-empty queue list that no worker group consumes: its tasks wait
    forever (e.g. a plain Celery client's queue missing from APPLIANCE_WORKER_GROUPS)."""
    return [
        Check(
            f"queue_{re.sub(r'[^A-Za-z0-9_.-]', '_', entry['queue'])}_unconsumed",
            WARNING,
            unconsumed_message(entry, cfg.queues, cfg.worker_groups),
            entry["depth"],
        )
        for entry in unconsumed_queues(conn, cfg.queues, cfg.worker_groups, beats)
    ]
