"""The reconciler: re-publish tasks whose record is PENDING but whose message Redis lost.

The publish hook writes a task's PENDING record before its message goes to Redis. When
Redis loses its data (a restart without persistence, a failover to a replica that lagged,
a FLUSHALL, a worker killed between popping a message and recording it as unacked), the
records stay PENDING forever while no message will ever run. The records are the source
of truth here: for every record PENDING for longer than a minimum age, the reconciler
looks for its message in Redis and re-publishes the missing ones with the same task id,
name, args, kwargs and queue.

What counts as "still there" (then nothing is done):

* a message with that id in a list of a configured queue (or of the record's queue),
  priority sub-queues included, or in kombu's ``unacked`` hash (taken by a worker, also
  where a worker keeps ETA/countdown tasks until they run);
* a task a live worker holds in memory: running, reserved or scheduled (ETA) - asked with
  one ``query_task`` broadcast, because after a Redis restart those are in no list;
* a result in the result backend (the task ran; only its record missed the update);
* a record that left PENDING while the reconciler looked.

A message moves between a list and the ``unacked`` hash in two steps on the worker side,
so one scan can miss it: only ids missing from two scans a couple of seconds apart count.

Two reconcilers (a beat on every host, an operator's CLI) never re-publish the same id
twice: the run holds a short lease in the broker's Redis (``SET NX PX``, the beat lease's
compare-and-renew scripts), renewed before every publish; a run that finds it taken does
nothing, a run that lost it stops.

What a re-published task gets back: id, name, args, kwargs, queue (and root id). What it
does not: ETA/countdown (it runs at once), priority, per-call time limits, expiry,
callbacks or chain/chord links. Members of a workflow (a record with a parent, or whose
root is another task) are therefore not re-published, only reported, because without
their links the workflow would silently stop; `appliance tasks retry ID --force` sends
one by hand.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from appliance.broker import scripts
from appliance.config.settings import Settings
from appliance.core import keys

logger = logging.getLogger("appliance.reconcile")

# Long enough for a scan of a big backlog; renewed before every publish.
LOCK_TTL_SECONDS = 120.0
# A message is only "missing" if two scans this far apart both miss it.
CONFIRM_SECONDS = 2.0
# Queue items read (and decoded on the server) per script call: keeps Redis responsive.
SCAN_CHUNK = 1000
# How long live workers get to say which of the missing ids they hold in memory.
WORKER_QUERY_TIMEOUT = 1.0
# Records examined per run (oldest first); the next run takes the rest.
MAX_CANDIDATES = 10_000
# The beat entry `appliance-reconcile` runs it this often (appliance/config/profile.py).
SCHEDULE_SECONDS = 60.0


class Lock(Protocol):
    def acquire(self) -> bool: ...
    def renew(self) -> bool: ...
    def release(self) -> bool: ...


class Broker(Protocol):
    """What the reconciler asks of Redis and the workers (faked in the unit tests)."""

    def lock(self) -> Lock: ...
    def message_ids(self, queues: Sequence[str]) -> set[str]: ...
    def held_by_workers(self, ids: Sequence[str]) -> set[str]: ...
    def result_metas(self, ids: Sequence[str]) -> dict[str, dict[str, Any]]: ...
    def republish(self, record: dict[str, Any]) -> None: ...
    def close(self) -> None: ...


@dataclass
class Report:
    """What one run found and did."""

    min_age: float
    dry_run: bool
    pending: int = 0  # records PENDING for longer than min_age
    in_broker: int = 0  # ... whose message is in a queue list or unacked
    held_by_workers: int = 0  # ... held in memory by a live worker
    has_result: int = 0  # ... with a result in the result backend
    settled: list[str] = field(default_factory=list)  # ... whose record took that result
    moved_on: int = 0  # ... whose record left PENDING while we looked
    not_restorable: list[str] = field(default_factory=list)  # workflow members, bad args
    republished: list[str] = field(default_factory=list)  # (would be, in a dry run)
    locked_out: bool = False  # another reconciler held the lock: nothing (more) done
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        if self.locked_out and not self.republished:
            return "another reconciler is running; nothing done"
        verb = "would re-publish" if self.dry_run else "re-published"
        return (
            f"{verb} {len(self.republished)} of {self.pending} task(s) PENDING for over "
            f"{self.min_age:g}s; still in Redis: {self.in_broker}, held by workers: "
            f"{self.held_by_workers}, with a result: {self.has_result} (records settled "
            f"from it: {len(self.settled)}), started meanwhile: "
            f"{self.moved_on}, not restorable: {len(self.not_restorable)}"
            + (" (stopped: lost the lock)" if self.locked_out else "")
        )


def _settle(
    url: str,
    records: list[dict[str, Any]],
    metas: dict[str, dict[str, Any]],
    report: Report,
) -> None:
    """Give a PENDING record the final state its result holds (its own writes failed, e.g.
    during a database outage): once the result expires, the record alone would make the
    next run re-publish a task that has already run."""
    from appliance.records import store

    for record in records:
        meta = metas.get(record["id"]) or {}
        status = meta.get("status")
        try:
            if status == "SUCCESS":
                store.record_succeeded(
                    url, task_id=record["id"], name=record["name"], result=meta.get("result")
                )
            elif status == "FAILURE":
                result = meta.get("result")
                error = (
                    f"{result.get('exc_type', 'Error')}: {result.get('exc_message', '')}"
                    if isinstance(result, dict)
                    else str(result)
                )
                store.record_failed(
                    url,
                    task_id=record["id"],
                    name=record["name"],
                    error=error,
                    traceback=meta.get("traceback"),
                )
            else:
                continue
        except Exception as exc:
            logger.warning("record of %s not settled from its result: %s", record["id"], exc)
            continue
        report.settled.append(record["id"])
        logger.info("record of %s settled from its result: %s", record["id"], status)


def restorable(record: dict[str, Any]) -> str | None:
    """Why *record* cannot be re-published from what it keeps, or None if it can."""
    if not record.get("name"):
        return "no task name"
    if record.get("parent_id") or record.get("root_id") not in (None, record["id"]):
        return "member of a workflow (its links are not in the record)"
    if not isinstance(record.get("args"), list):
        return "arguments not recorded as a JSON array"
    if not isinstance(record.get("kwargs"), (dict, type(None))):
        return "keyword arguments not recorded as a JSON object"
    return None


def reconcile(
    settings: Settings,
    *,
    min_age: float | None = None,
    dry_run: bool = False,
    broker: Broker | None = None,
    confirm_seconds: float = CONFIRM_SECONDS,
    limit: int = MAX_CANDIDATES,
) -> Report:
    """Re-publish PENDING tasks older than *min_age* seconds whose message Redis lost.

    Raises BrokerUnavailableError / DatabaseUnavailableError (one line each).
    """
    from appliance.records import maintenance
    from appliance.records.db import translate_errors

    started = time.monotonic()
    url = settings.effective_database_url
    age = float(settings.reconcile_min_age if min_age is None else min_age)
    report = Report(min_age=age, dry_run=dry_run)
    cutoff = datetime.now(UTC) - timedelta(seconds=age)
    with translate_errors(url):
        candidates = maintenance.list_pending_before(url, cutoff, limit=limit)
    report.pending = len(candidates)
    if not candidates:
        return report
    own = broker is None
    view = broker if broker is not None else RedisBroker(settings)
    try:
        with _broker_errors(settings):
            if dry_run:
                missing = _missing(settings, view, candidates, cutoff, report, confirm_seconds)
                report.republished = [r["id"] for r in missing]
                for record in missing:
                    logger.warning("dry run: would re-publish %s", _describe(record))
            else:
                _republish(settings, view, candidates, cutoff, report, confirm_seconds)
    finally:
        if own:
            view.close()
        report.seconds = round(time.monotonic() - started, 3)
    return report


def _republish(
    settings: Settings,
    broker: Broker,
    candidates: list[dict[str, Any]],
    cutoff: Any,
    report: Report,
    confirm_seconds: float,
) -> None:
    lock = broker.lock()
    if not lock.acquire():
        report.locked_out = True
        logger.info("reconcile: another reconciler holds %s; nothing done", keys.RECONCILE_LOCK_KEY)
        return
    try:
        for record in _missing(settings, broker, candidates, cutoff, report, confirm_seconds):
            if not lock.renew():
                report.locked_out = True
                logger.warning("reconcile: lost the lock %s; stopping", keys.RECONCILE_LOCK_KEY)
                return
            broker.republish(record)
            report.republished.append(record["id"])
            logger.warning(
                "re-published %s: its record was PENDING but Redis had no message for it",
                _describe(record),
            )
    finally:
        lock.release()


def _missing(
    settings: Settings,
    broker: Broker,
    candidates: list[dict[str, Any]],
    cutoff: Any,
    report: Report,
    confirm_seconds: float,
) -> list[dict[str, Any]]:
    """The candidates whose message is nowhere, restorable from their record."""
    from appliance.records import maintenance
    from appliance.records.db import translate_errors

    recorded = [r["queue"] for r in candidates if r["queue"]]
    queues = list(dict.fromkeys([*settings.queues, *recorded]))
    present = broker.message_ids(queues)
    suspects = [r for r in candidates if r["id"] not in present]
    if suspects and confirm_seconds > 0:
        time.sleep(confirm_seconds)
        present = broker.message_ids(queues)
        suspects = [r for r in suspects if r["id"] not in present]
    report.in_broker = len(candidates) - len(suspects)
    if not suspects:
        return []
    held = broker.held_by_workers([r["id"] for r in suspects])
    report.held_by_workers = sum(1 for r in suspects if r["id"] in held)
    suspects = [r for r in suspects if r["id"] not in held]
    results = broker.result_metas([r["id"] for r in suspects])
    report.has_result = sum(1 for r in suspects if r["id"] in results)
    url = settings.effective_database_url
    if not report.dry_run:
        _settle(url, [r for r in suspects if r["id"] in results], results, report)
    suspects = [r for r in suspects if r["id"] not in results]
    with translate_errors(url):
        still = {
            r["id"] for r in maintenance.list_pending_before(url, cutoff, limit=len(candidates))
        }
    report.moved_on = sum(1 for r in suspects if r["id"] not in still)
    missing = []
    for record in suspects:
        if record["id"] not in still:
            continue
        why = restorable(record)
        if why is None:
            missing.append(record)
        else:
            report.not_restorable.append(record["id"])
            logger.warning(
                "not re-publishing %s although Redis has no message for it: %s; fix: check "
                "it and send it again with `appliance tasks retry %s --force`",
                _describe(record),
                why,
                record["id"],
            )
    return missing


def _describe(record: dict[str, Any]) -> str:
    return f"task {record['id']} ({record['name']}, queue {record['queue'] or 'default route'})"


@contextmanager
def _broker_errors(settings: Settings) -> Iterator[None]:
    import redis
    from kombu.exceptions import OperationalError

    from appliance.broker.admin import unavailable

    try:
        yield
    except (redis.RedisError, OperationalError, OSError) as exc:
        raise unavailable(settings, exc) from None


class RedisBroker:
    """The broker's Redis (through kombu's pool, so sentinel:// and TLS work), the result
    backend and the workers' control channel."""

    def __init__(self, settings: Settings) -> None:
        from appliance.celery_app import load_tasks

        self.settings = settings
        self.app = load_tasks()
        self._connection: Any = None
        self._client: Any = None

    @property
    def client(self) -> Any:
        if self._client is None:
            from appliance.broker.admin import on_kombu_pool

            self._connection, self._client = on_kombu_pool(self.app)
        return self._client

    def close(self) -> None:
        if self._connection is not None:
            self._connection.release()
            self._connection = self._client = None

    def lock(self) -> Lock:
        from appliance.broker.lease import Lease

        return Lease(self.client, keys.RECONCILE_LOCK_KEY, LOCK_TTL_SECONDS)

    def message_ids(self, queues: Sequence[str]) -> set[str]:
        """Ids of the messages in the queues' lists (every priority), then in unacked."""
        from appliance.core.keys import queue_keys

        script = self.client.register_script(scripts.source("queue_ids_in_range"))
        ids: set[str] = set()
        for queue in queues:
            for key in queue_keys(queue):
                # Left to right: kombu pushes on the left and pops on the right, so an
                # item that stays in the list shifts right and is never skipped.
                start = 0
                while True:
                    chunk = script(keys=[key], args=[start, start + SCAN_CHUNK - 1])
                    ids.update(i.decode() for i in chunk if i)
                    if len(chunk) < SCAN_CHUNK:
                        break
                    start += SCAN_CHUNK
        for _tag, raw in self.client.hscan_iter(keys.UNACKED_KEY, count=SCAN_CHUNK):
            task_id = _unacked_task_id(raw)
            if task_id:
                ids.add(task_id)
        return ids

    def held_by_workers(self, ids: Sequence[str]) -> set[str]:
        if not ids:
            return set()
        inspect = self.app.control.inspect(timeout=WORKER_QUERY_TIMEOUT)
        replies = inspect.query_task(*ids) or {}
        return {task_id for reply in replies.values() for task_id in (reply or {})}

    def result_metas(self, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        backend = self.app.backend
        key_for = getattr(backend, "get_key_for_task", None)
        client = getattr(backend, "client", None)
        if key_for is None or client is None or not ids:
            return {}
        pipe = client.pipeline(transaction=False)
        for task_id in ids:
            pipe.get(key_for(task_id))
        metas: dict[str, dict[str, Any]] = {}
        for task_id, raw in zip(ids, pipe.execute(), strict=True):
            if raw is None:
                continue
            try:
                meta = json.loads(raw)
            except ValueError:
                meta = None
            metas[task_id] = meta if isinstance(meta, dict) else {}
        return metas

    def republish(self, record: dict[str, Any]) -> None:
        queue = record["queue"] if record["queue"] in self.settings.queues else None
        options: dict[str, Any] = {"queue": queue} if queue else {}
        # The publish hook's insert-ignore keeps the existing record as it is.
        self.app.send_task(
            record["name"],
            args=record["args"],
            kwargs=record["kwargs"] or {},
            task_id=record["id"],
            root_id=record["root_id"] or record["id"],
            add_to_parent=False,
            **options,
        )


def _unacked_task_id(raw: bytes) -> str | None:
    """The task id in an ``unacked`` hash value: JSON ``[message, exchange, routing_key]``."""
    try:
        return str(json.loads(raw)[0]["headers"]["id"])
    except (ValueError, KeyError, IndexError, TypeError):
        return None
