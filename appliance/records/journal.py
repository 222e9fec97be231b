"""Final record writes carried with the task's ack, flushed to the database in bulk.

In the consumers topology (appliance/worker/consumers/) a consumer does not write a task's
final state (SUCCESS, FAILURE, RETRY) to the database itself: the write rides in the
ack's script as one entry of its unit's journal, a Redis list on the broker
(``appliance:records:journal:<node>``), in the same atomic step as the ack. The record
is therefore as durable as the queue before the message leaves it (the promise "final
state before ack" holds, in Redis). The unit's supervising parent moves the journal into
the database in one transaction per batch, every :data:`FLUSH_SECONDS`; a record shows
its final state that much later than the result backend does. While the database is
down the journal waits and the records catch up when it is back; past
:data:`JOURNAL_CAP` entries the consumers write directly again (and count what fails),
so a long outage cannot fill Redis. An entry is the writer's name and its keyword
arguments, datetimes tagged. Only the parent of the unit flushes its journal; a unit
that never comes back leaves its journal for the next start under that node name.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from datetime import datetime
from typing import Any

from appliance.core import constants as C
from appliance.core import keys
from appliance.core.text import one_line
from appliance.records.db import transient

logger = logging.getLogger("appliance.records")

JOURNAL_CAP = C.RECORDS_JOURNAL_CAP
FLUSH_SECONDS = 0.1
FLUSH_BATCH = 1000
# After a failed flush (database down), wait this long before the next one.
RETRY_SECONDS = 1.0


def journal_key(node: str) -> str:
    return keys.RECORDS_JOURNAL_KEY.format(node=node)


def _tag(value: Any) -> Any:
    if isinstance(value, datetime):
        return {"$dt": value.isoformat()}
    raise TypeError(f"not JSON: {type(value).__name__}")


def _untag(obj: dict[str, Any]) -> Any:
    if len(obj) == 1 and "$dt" in obj:
        return datetime.fromisoformat(obj["$dt"])
    return obj


def encode(writer: str, kwargs: dict[str, Any]) -> str:
    """One journal entry: the store writer's name and its (JSON-able) keyword arguments."""
    from appliance.records.statements import jsonable

    kwargs = dict(kwargs)
    if "result" in kwargs:
        kwargs["result"] = jsonable(kwargs["result"])
    started = kwargs.get("started")
    if started:
        kwargs["started"] = {
            **started,
            "args": jsonable(started.get("args")),
            "kwargs": jsonable(started.get("kwargs")),
        }
    return json.dumps({"w": writer, "kw": kwargs}, default=_tag)


def decode(entry: bytes | str) -> tuple[str, dict[str, Any]]:
    from appliance.records.store import BULK_WRITERS

    data = json.loads(entry, object_hook=_untag)
    writer = data["w"]
    if writer not in BULK_WRITERS:
        raise ValueError(f"unknown writer {writer!r}")
    return writer, dict(data["kw"])


class Flusher:
    """Moves one unit's journal into the database (the consumers' parent runs it)."""

    def __init__(self, client: Any, node: str, url: str) -> None:
        self.client, self.url = client, url
        self.key = journal_key(node)
        self._waiting_key = keys.RECORDS_JOURNAL_WAITING_KEY.format(node=node)
        self._next = 0.0
        self._failing_since: float | None = None
        self.written = 0

    def due(self, now: float) -> bool:
        return now >= self._next

    def flush(self, now: float | None = None, everything: bool = False) -> int:
        """Write what the journal holds (a batch, or *everything*); entries written."""
        now = time.monotonic() if now is None else now
        self._next = now + FLUSH_SECONDS
        done = 0
        while True:
            try:
                batch = self._flush_batch()
            except Exception as exc:
                self._next = now + RETRY_SECONDS
                error = one_line(exc)
                if self._failing_since is None:
                    self._failing_since = time.time()
                    logger.warning(
                        "task records not flushed (%s); they wait in Redis (%s) and are "
                        "written when the database is back",
                        error,
                        self.key,
                    )
                self._tell_health(error)
                return done
            if self._failing_since is not None:
                self._failing_since = None
                logger.info("task records flushed again")
                with contextlib.suppress(Exception):
                    self.client.delete(self._waiting_key)
            done += batch
            if batch < FLUSH_BATCH or not everything:
                return done

    def _tell_health(self, error: str) -> None:
        """What `appliance health` reports as record_journal (best effort: Redis may be
        what fails)."""
        with contextlib.suppress(Exception):
            waiting = int(self.client.llen(self.key))
            state = {"waiting": waiting, "since": self._failing_since, "error": error[:300]}
            self.client.set(self._waiting_key, json.dumps(state), ex=C.RECORDS_JOURNAL_WAITING_TTL)

    def _flush_batch(self) -> int:
        from appliance.records import store

        entries = self.client.lrange(self.key, 0, FLUSH_BATCH - 1)
        if not entries:
            return 0
        writes = []
        for entry in entries:
            try:
                writes.append(decode(entry))
            except (ValueError, KeyError, TypeError) as exc:
                logger.error("journal entry dropped (%s): %r", exc, entry[:500])
        try:
            store.write_many(self.url, writes)
        except Exception as exc:
            if transient(exc):
                raise
            self._one_by_one(writes)  # one bad entry must not hold back the rest
        self.client.ltrim(self.key, len(entries), -1)
        self.written += len(entries)
        return len(entries)

    def _one_by_one(self, writes: list[tuple[str, dict[str, Any]]]) -> None:
        from appliance.records import store

        for writer, kwargs in writes:
            try:
                getattr(store, writer)(self.url, **kwargs)
            except Exception as exc:
                if transient(exc):
                    raise
                logger.error("task record %s not written: %s", kwargs.get("task_id"), exc)
