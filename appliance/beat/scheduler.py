"""Beat's scheduler: one active beat across hosts, a tick heartbeat and systemd notify.

Every tick first holds (renews or takes) the Redis lease; only the holder sends
anything. The holder records an entry's run in Redis, fenced by its lease, before it
sends the task, so the next holder starts from the same schedule state: a slot is
never sent twice, and a crash between record and send loses that one slot
(at-most-once; see docs/architecture.md, One active beat).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import threading
import time
from datetime import datetime
from typing import Any

import redis
from celery.beat import PersistentScheduler
from kombu.exceptions import OperationalError

from appliance.broker.lease import Lease
from appliance.config.settings import get_settings
from appliance.core import constants as C
from appliance.core import keys
from appliance.worker.sdnotify import Notifier, watchdog_interval

logger = logging.getLogger("appliance.beat")

_REDIS_ERRORS = (redis.RedisError, OSError, OperationalError)


class _LeaseLost(Exception):
    """Raised when the lease was gone at the moment a run was to be recorded."""


class LeaderScheduler(PersistentScheduler):  # type: ignore[misc]
    """celery.beat's persistent scheduler, sending only while it holds the beat lease."""

    max_interval: float

    def __init__(
        self,
        *args: Any,
        redis_client: redis.Redis | None = None,
        notifier: Notifier | None = None,
        **kwargs: Any,
    ) -> None:
        self.lease_ttl = get_settings().beat_lease_ttl
        self.watchdog = watchdog_interval()
        self._client = redis_client
        self._connection: Any = None
        self._lease: Lease | None = None
        self._notifier = notifier or Notifier()
        self._hostname = socket.gethostname()
        self._role: str | None = None  # leader, standby or unreachable
        self._status = ""
        self._ready = False
        self._closed = False
        self._stopping = False
        self._note_stop_signals()
        super().__init__(*args, **kwargs)
        # The leader renews on every tick, so a tick comes at least three times per TTL.
        limits = [self.max_interval, C.BEAT_MAX_LOOP_INTERVAL, self.lease_ttl / 3]
        self.max_interval = min(limits + ([self.watchdog] if self.watchdog else []))

    def _note_stop_signals(self) -> None:
        """Remember a SIGTERM/SIGINT before Celery's own handler (which raises SystemExit)."""
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in (signal.SIGTERM, signal.SIGINT):
            previous = signal.getsignal(signum)
            if not callable(previous):
                continue

            def noting(number: int, frame: Any, previous: Any = previous) -> None:
                self._stopping = True
                previous(number, frame)

            signal.signal(signum, noting)

    @property
    def is_leader(self) -> bool:
        return self._role == "leader"

    def tick(self, *args: Any, **kwargs: Any) -> float:
        if not self._ready:
            self._warn_about_watchdog()
        try:
            interval = self._tick(*args, **kwargs)
        except Exception as exc:
            if self._stopping:
                # SIGTERM landed inside a Redis read: Celery's handler raised SystemExit
                # there, and redis-py replaced it (e.g. ValueError) while closing the socket.
                raise SystemExit() from None
            if not isinstance(exc, _REDIS_ERRORS):
                raise
            interval = self._unreachable(exc)
        if not self._ready:
            self._ready = True
            self._notifier.ready(self._status)
        if self.watchdog is not None:
            self._notifier.watchdog()
        return float(interval)

    def _tick(self, *args: Any, **kwargs: Any) -> float:
        lease = self._get_lease()
        if not lease.hold():
            return self._stand_by(lease)
        if not self.is_leader:
            self._take_over(lease)
        try:
            interval = super().tick(*args, **kwargs)
        except _LeaseLost:
            return self._stand_by(lease)
        self._write_tick(lease)
        return float(interval)

    def reserve(self, entry: Any) -> Any:
        """Advance *entry* and record its run in Redis first: no record, no send."""
        new_entry = next(entry)
        stamp = repr(new_entry.last_run_at.timestamp())
        if self._lease is None or not self._lease.hset_if_held(
            keys.BEAT_LAST_RUN_KEY, entry.name, stamp
        ):
            raise _LeaseLost(entry.name)
        self.schedule[entry.name] = new_entry
        return new_entry

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._notifier.stopping("stopping")
            if self.is_leader and self._lease is not None:
                try:
                    self._lease.release()
                except _REDIS_ERRORS as exc:
                    logger.warning("beat lease not released (%s); it expires by itself", exc)
            self._role = None
            self._notifier.close()
            if self._connection is not None:
                self._connection.release()
        super().close()

    # Roles ------------------------------------------------------------------------------

    def _take_over(self, lease: Lease) -> None:
        runs = _last_runs(lease.client.hgetall(keys.BEAT_LAST_RUN_KEY))
        for name, entry in self.schedule.items():
            if name in runs:
                entry.last_run_at = datetime.fromtimestamp(runs[name], tz=self.app.timezone)
        self._heap = None  # rebuilt from the recorded runs on this tick
        self._role = "leader"
        logger.info(
            "beat lease taken: this beat sends the schedule (lease ttl %ss)", self.lease_ttl
        )

    def _stand_by(self, lease: Lease) -> float:
        if self._role != "standby":
            if self.is_leader:
                logger.warning("beat lease lost: standing by, sending nothing")
            else:
                logger.info("beat lease held by another beat: standing by")
            self._role = "standby"
            self._heap = None
        leader = _leader_of(lease.client.get(keys.BEAT_TICK_KEY))
        self._set_status(f"standby; leader: {leader}")
        remaining = lease.remaining()
        if remaining is None:
            return float(self.max_interval)
        # Wake when the lease runs out, so a dead leader is replaced within one TTL.
        return min(float(self.max_interval), remaining + 0.01)

    def _unreachable(self, exc: BaseException) -> float:
        if self._role != "unreachable":
            logger.warning("beat: Redis unreachable (%s); sending nothing until it answers", exc)
            self._role = "unreachable"
            self._heap = None
        self._set_status("Redis unreachable; sending nothing")
        return float(self.max_interval)

    # Heartbeat and notify ----------------------------------------------------------------

    def _write_tick(self, lease: Lease) -> None:
        name, due = self._next_due()
        tick = {
            "leader": f"{self._hostname} pid {os.getpid()}",
            "hostname": self._hostname,
            "pid": os.getpid(),
            "last_tick": time.time(),
            "next_entry": name,
            "next_due": due,
            "lease_ttl": self.lease_ttl,
        }
        lease.client.set(keys.BEAT_TICK_KEY, json.dumps(tick), ex=C.HEARTBEAT_TTL)
        if name is None or due is None:
            self._set_status("leader; nothing scheduled")
            return
        when = datetime.fromtimestamp(due, self.app.timezone).isoformat(" ", "seconds")
        self._set_status(f"leader; next: {name} at {when}")

    def _next_due(self) -> tuple[str | None, float | None]:
        if not self._heap:
            return None, None
        event = self._heap[0]
        return str(event.entry.name), float(event.time)

    def _set_status(self, text: str) -> None:
        if text != self._status:
            self._status = text
            if self._ready:
                self._notifier.status(text)

    def _warn_about_watchdog(self) -> None:
        if self.watchdog is not None and self.watchdog < C.BEAT_MAX_LOOP_INTERVAL:
            logger.warning(
                "WatchdogSec/2 (%gs) is shorter than beat's loop interval (%ss): ticking every "
                "%gs instead; fix: set WatchdogSec to at least %ss",
                self.watchdog,
                C.BEAT_MAX_LOOP_INTERVAL,
                self.max_interval,
                2 * C.BEAT_MAX_LOOP_INTERVAL,
            )

    # Redis -------------------------------------------------------------------------------

    def _get_lease(self) -> Lease:
        if self._lease is None:
            client = self._client if self._client is not None else self._broker_redis()
            self._lease = Lease(client, keys.BEAT_LEASE_KEY, self.lease_ttl)
        return self._lease

    def _broker_redis(self) -> redis.Redis:
        from appliance.broker.admin import on_kombu_pool

        self._connection, client = on_kombu_pool(self.app)
        return client


def _leader_of(raw: bytes | str | None) -> str:
    try:
        return str(json.loads(raw)["leader"]) if raw else "unknown"
    except (ValueError, TypeError, KeyError):
        return "unknown"


def _last_runs(raw: dict[Any, Any]) -> dict[str, float]:
    runs: dict[str, float] = {}
    for name, stamp in raw.items():
        try:
            runs[name.decode() if isinstance(name, bytes) else str(name)] = float(stamp)
        except ValueError:
            logger.warning("beat: ignoring unreadable last run %r of %r", stamp, name)
    return runs
