"""The health checks. Each returns Check results; none raises for an unhealthy system."""

from __future__ import annotations

import json
import time
from typing import Any

from appliance.broker import reach
from appliance.broker.acl import acl_user, grant, is_noperm
from appliance.core import keys
from appliance.health.config import HealthConfig
from appliance.health.queues import check_queues, check_unacked, check_unconsumed
from appliance.health.resp import Resp, RespConnectionError, RespError, parse_info, scan
from appliance.health.verdict import CRITICAL, OK, WARNING, Check, measured


def check_redis(cfg: HealthConfig, conn: Resp, now: float) -> list[Check]:
    """Round trip, eviction policy, memory headroom, persistence."""
    start = time.perf_counter()
    pong = conn.call("PING")
    latency = (time.perf_counter() - start) * 1000
    if pong != "PONG":  # something else listens there and happens to speak RESP
        raise RespConnectionError(f"not a Redis reply to PING: {str(pong)[:40]!r}")
    checks = [measured("redis_latency", latency, "ms", cfg.threshold("latency_ms"), "Redis PING")]
    try:
        info = parse_info(conn.call("INFO", "everything"))
    except RespError as exc:
        if not is_noperm(exc):
            raise
        # An ACL user without INFO (it is in @dangerous): the rest of the checks still run.
        checks.append(
            Check(
                "redis_info",
                WARNING,
                f"Redis refused INFO to ACL user {acl_user(cfg.broker_url)}, so eviction "
                "policy, memory and persistence are not checked; "
                f"fix: {grant(cfg.broker_url, '+info')}",
            )
        )
        return checks

    policy = info.get("maxmemory_policy", "unknown")
    if policy == "noeviction":
        checks.append(Check("eviction_policy", OK, "maxmemory-policy noeviction"))
    else:
        checks.append(
            Check(
                "eviction_policy",
                CRITICAL,
                f"maxmemory-policy is {policy}: Redis may evict queued tasks; "
                "fix: CONFIG SET maxmemory-policy noeviction (appliance redis tune)",
            )
        )

    used, limit = int(info.get("used_memory", 0)), int(info.get("maxmemory", 0))
    if limit == 0:
        checks.append(
            Check(
                "memory",
                WARNING,
                f"no maxmemory set ({used // 1048576} MiB used): Redis grows until the "
                "OOM killer; fix: set maxmemory (appliance redis tune)",
                used,
                "B",
            )
        )
    else:
        pct = used * 100 / limit
        check = measured("memory", pct, "%", cfg.threshold("memory_pct"), "Redis memory used")
        check.maximum = 100
        check.message += f" of {limit // 1048576} MiB"
        checks.append(check)

    if info.get("aof_enabled") != "1":
        checks.append(
            Check(
                "persistence",
                WARNING,
                "AOF is off: a Redis restart loses queued tasks; fix: appendonly yes",
            )
        )
    elif (
        info.get("aof_last_write_status", "ok") != "ok"
        or info.get("aof_last_bgrewrite_status", "ok") != "ok"
    ):
        checks.append(
            Check(
                "persistence",
                CRITICAL,
                "AOF writes are failing: Redis will refuse writes; fix: check its disk",
            )
        )
    elif info.get("rdb_last_bgsave_status", "ok") != "ok":
        checks.append(
            Check(
                "persistence",
                CRITICAL,
                "the last RDB save failed (MISCONF refuses writes); fix: check its disk",
            )
        )
    else:
        checks.append(Check("persistence", OK, "AOF on, last write ok"))
    return checks


def _json_values(conn: Resp, pattern: str) -> list[tuple[bytes, Any]]:
    """(key, decoded JSON value) of every key matching *pattern*; garbage is skipped."""
    names = scan(conn, pattern)
    if not names:
        return []
    values = []
    for key, raw in zip(names, conn.call("MGET", *names), strict=True):
        try:
            values.append((key, json.loads(raw)))
        except (TypeError, ValueError):
            continue
    return values


def read_heartbeats(conn: Resp) -> list[dict[str, Any]]:
    return [beat for _, beat in _json_values(conn, keys.WORKER_HEARTBEAT_KEY.format(hostname="*"))]


def check_workers(cfg: HealthConfig, beats: list[dict[str, Any]], now: float) -> list[Check]:
    """A live heartbeat for every expected queue group; write errors; failure ratio."""
    checks = []
    for group in cfg.expected_groups:
        live = [b for b in beats if b.get("group") == group]
        if live:
            checks.append(
                Check(f"workers_{group}", OK, f"group {group}: {len(live)} worker(s)", len(live))
            )
        else:
            queues = ",".join(cfg.worker_groups.get(group, []))
            checks.append(
                Check(
                    f"workers_{group}",
                    CRITICAL,
                    f"group {group}: no live worker for queues {queues}; "
                    f"fix: systemctl start appliance-worker@{group}",
                    0,
                )
            )
    errors = sum(int(b.get("record_write_errors", 0)) for b in beats)
    if errors:
        checks.append(
            Check(
                "record_writes",
                WARNING,
                f"{errors} task record write(s) failed on workers: records have gaps; "
                "fix: check APPLIANCE_DATABASE_URL and the database",
                errors,
            )
        )
    finished = sum(int(b.get("window_done", 0)) for b in beats)
    failed = sum(int(b.get("window_failed", 0)) for b in beats)
    if finished:
        check = measured(
            "failure_ratio",
            failed * 100 / finished,
            "%",
            cfg.threshold("failure_pct"),
            "recent failures",
        )
        check.maximum = 100
        check.message += f" ({failed} of {finished})"
        checks.append(check)
    return checks


def check_record_journal(conn: Resp, now: float) -> list[Check]:
    """Final record writes waiting in a consumers unit's journal for the database."""
    states = [
        (key.decode(errors="replace").rsplit(":", 1)[-1], state)
        for key, state in _json_values(conn, keys.RECORDS_JOURNAL_WAITING_KEY.format(node="*"))
        if isinstance(state, dict)
    ]
    if not states:
        return []
    waiting = sum(int(state.get("waiting", 0)) for _, state in states)
    node, oldest = min(states, key=lambda s: float(s[1].get("since") or now))
    age = max(0.0, now - float(oldest.get("since") or now))
    return [
        Check(
            "record_journal",
            WARNING,
            f"{waiting} task record write(s) wait in Redis for the database "
            f"({node}, {age:.0f} s: {oldest.get('error', '?')}); they are written when it "
            "is back; fix: check APPLIANCE_DATABASE_URL and the database",
            waiting,
        )
    ]


def check_beat(cfg: HealthConfig, conn: Resp, now: float) -> list[Check]:
    """A fresh tick from the beat leader."""
    raw = conn.call("GET", keys.BEAT_TICK_KEY)
    tick: dict[str, Any] = {}
    if raw:
        try:
            tick = json.loads(raw)
        except ValueError:
            tick = {}
    last = tick.get("last_tick")
    if not isinstance(last, (int, float)):
        status = CRITICAL if cfg.expect_beat else OK
        message = (
            "no beat leader is ticking; fix: systemctl start appliance-beat"
            if cfg.expect_beat
            else "beat not expected here"
        )
        return [Check("beat", status, message)]
    check = measured(
        "beat_age", max(0.0, now - last), "s", cfg.threshold("beat_age"), "beat last tick"
    )
    check.message += f" (leader {tick.get('leader', '?')})"
    return [check]


def check_pidbox(cfg: HealthConfig, conn: Resp, now: float) -> list[Check]:
    """Reply keys of remote-control calls: they never expire (celery #6089) and pile up."""
    count = len(scan(conn, keys.PIDBOX_REPLY_PATTERN, count=1000))
    check = measured(
        "pidbox_orphans", count, "", cfg.threshold("pidbox_orphans"), "pidbox reply keys"
    )
    if check.status:
        check.message += "; fix: delete keys matching *.reply.celery.pidbox"
    return [check]


def run_redis_checks(cfg: HealthConfig) -> list[Check]:
    """Every check that needs only Redis; CRITICAL at once when Redis cannot be reached."""
    now = time.time()
    try:
        with Resp(cfg.broker_url, timeout=2.0) as conn:
            checks = check_redis(cfg, conn, now)
            checks += check_queues(cfg, conn, now)
            checks += check_unacked(cfg, conn, now)
            beats = read_heartbeats(conn)
            checks += check_workers(cfg, beats, now)
            checks += check_unconsumed(cfg, conn, beats)
            checks += check_record_journal(conn, now)
            checks += check_beat(cfg, conn, now)
            checks += check_pidbox(cfg, conn, now)
            return checks
    except (RespConnectionError, RespError) as exc:
        return [unreadable(cfg, exc, "the health check")]


def unreadable(cfg: HealthConfig, exc: Exception, what: str) -> Check:
    """The CRITICAL `redis` check when Redis could not be read for *what*: down, refusing
    the login, or refusing a command."""
    if isinstance(exc, RespConnectionError) or reach.is_auth_error(exc):
        message = reach.problem(cfg.broker_url, str(exc), cfg.broker_origin)
    else:
        message = (
            f"Redis refused {what} ({exc}); fix: check the user, password and ACL in "
            "APPLIANCE_BROKER_URL"
        )
    return Check("redis", CRITICAL, message)
