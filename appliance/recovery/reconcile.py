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

import logging
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from appliance.config.settings import Settings
from appliance.core import keys
from appliance.recovery.redis_view import Broker, RedisBroker, broker_errors

logger = logging.getLogger("appliance.reconcile")

# A message is only "missing" if two scans this far apart both miss it.
CONFIRM_SECONDS = 2.0
# Records examined per run (oldest first); the next run takes the rest.
MAX_CANDIDATES = 10_000
# The beat entry `appliance-reconcile` runs it this often (appliance/config/profile.py).
SCHEDULE_SECONDS = 60.0


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
    purged: list[str] = field(default_factory=list)  # ... whose message a purge deleted
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
            f"{self.moved_on}, purged: {len(self.purged)}, not restorable: "
            f"{len(self.not_restorable)}" + (" (stopped: lost the lock)" if self.locked_out else "")
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
        with broker_errors(settings):
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
    purged = broker.purged([r["id"] for r in suspects])
    if purged:
        _settle_purged(settings, sorted(purged), report)
        suspects = [r for r in suspects if r["id"] not in purged]
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


def _settle_purged(settings: Settings, ids: list[str], report: Report) -> None:
    """Records of purged tasks end REVOKED (the purge's own write may have failed, or
    `celery purge` wrote none): a purge is never undone by a re-publish."""
    from appliance.broker.purge import PURGED_REASON
    from appliance.records import maintenance
    from appliance.records.db import translate_errors

    report.purged = ids
    if report.dry_run:
        return
    with translate_errors(settings.effective_database_url):
        maintenance.revoke_many(settings.effective_database_url, ids, reason=PURGED_REASON)
    logger.warning("%d PENDING task(s) whose message was purged marked REVOKED", len(ids))


def _describe(record: dict[str, Any]) -> str:
    return f"task {record['id']} ({record['name']}, queue {record['queue'] or 'default route'})"
