"""Submitting many tasks of one name at once: records in one transaction, messages in one
Redis pipeline per chunk (kombu's `Producer.batch`), instead of one of each per task.

The promise is the one of `appliance.submit`: a PENDING record is written before its
message is published, and a submit that fails says exactly what was accepted.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from appliance.broker.result_backend import no_subscription
from appliance.client.checks import check_payload, checked_target
from appliance.client.publish import publish_fix
from appliance.core.text import first_line, mask_url
from appliance.errors import BrokerUnavailableError, SubmitOptionError
from appliance.records import signals as record_signals

CHUNK = 1000  # messages per Redis pipeline (and records per transaction)


class BulkSubmitError(BrokerUnavailableError):
    """A bulk submit stopped part-way. `accepted` ids are queued; `uncertain` ids were in
    the pipeline that failed (their PENDING records are kept, so the reconciler queues any
    that did not reach Redis); the rest were never submitted and left no record."""

    def __init__(self, message: str, accepted: list[str], uncertain: list[str]) -> None:
        super().__init__(message)
        self.accepted = accepted
        self.uncertain = uncertain


def _call(item: Mapping[str, Any], index: int) -> tuple[list[Any], dict[str, Any]]:
    if not isinstance(item, Mapping) or set(item) - {"args", "kwargs"}:
        raise SubmitOptionError(
            f"call {index} is not a mapping with only 'args' and 'kwargs'; "
            'fix: pass e.g. {"args": [1, 2]} or {"kwargs": {"x": 1}} per task'
        )
    args, kwargs = item.get("args", ()), item.get("kwargs", {})
    if not isinstance(args, Sequence) or isinstance(args, str | bytes):
        raise SubmitOptionError(f"call {index}: 'args' must be a list; fix: e.g. [1, 2]")
    if not isinstance(kwargs, Mapping):
        raise SubmitOptionError(f"call {index}: 'kwargs' must be a mapping; fix: e.g. {{}}")
    return list(args), dict(kwargs)


def submit_many(
    name: str,
    calls: Iterable[Mapping[str, Any]],
    queue: str | None = None,
    priority: int | None = None,
) -> list[str]:
    """Publish one task *name* per item of *calls* ({"args": [...], "kwargs": {...}});
    return their ids in order.

    Raises UnknownTaskError, UnknownQueueError, SubmitOptionError (a malformed call, or
    one over APPLIANCE_MAX_PAYLOAD_BYTES; nothing submitted) or BulkSubmitError (Redis
    failed part-way: see its ids).
    """
    app, settings = checked_target(name, queue)
    parsed = [_call(item, index) for index, item in enumerate(calls)]
    for index, (args, kwargs) in enumerate(parsed):
        check_payload(settings, name, args, kwargs, what=f"call {index}: the arguments")
    ids = [str(uuid.uuid4()) for _ in parsed]
    options: dict[str, Any] = {}
    if queue is not None:
        options["queue"] = queue
    if priority is not None:
        options["priority"] = priority
    url = settings.records_url
    accepted: list[str] = []
    for start in range(0, len(parsed), CHUNK):
        chunk_ids = ids[start : start + CHUNK]
        chunk = parsed[start : start + CHUNK]
        if url is not None:
            from appliance.records import store

            routed = queue or settings.route_for(name) or settings.default_queue
            try:
                store.record_published_many(
                    url,
                    [
                        {"task_id": i, "name": name, "args": a, "kwargs": k, "queue": routed}
                        for i, (a, k) in zip(chunk_ids, chunk, strict=True)
                    ],
                )
            except Exception as exc:  # as for one submit: the work goes out, the gap is counted
                record_signals.note_write_error("submit_many", exc)
        token = record_signals.recorded_by_caller.set(True)
        try:
            with (
                no_subscription(),
                app.producer_or_acquire() as producer,
                producer.batch(max_size=2 * CHUNK),
            ):
                for task_id, (args, kwargs) in zip(chunk_ids, chunk, strict=True):
                    app.send_task(
                        name,
                        args=args,
                        kwargs=kwargs,
                        task_id=task_id,
                        producer=producer,
                        **options,
                    )
        except Exception as exc:
            reason = first_line(exc.__cause__ or exc)
            uncertain = [] if _never_connected(exc) else chunk_ids
            if not uncertain and url is not None:
                _forget(url, chunk_ids)
            raise BulkSubmitError(
                f"could not publish {name} to {mask_url(settings.broker_url)} ({reason}) "
                f"after {len(accepted)} of {len(ids)} tasks; {len(uncertain)} more are "
                "uncertain (their PENDING records are kept: `appliance tasks reconcile` "
                f"queues any that did not arrive); fix: {publish_fix(reason)}",
                accepted,
                uncertain,
            ) from None
        finally:
            record_signals.recorded_by_caller.reset(token)
        accepted += chunk_ids
    return ids


def _never_connected(exc: BaseException) -> bool:
    """True when Redis refused the connection itself: nothing of the chunk was sent."""
    seen: BaseException | None = exc
    while seen is not None:
        if "connecting to" in str(seen):  # redis-py: "Error 111 connecting to host:port."
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _forget(url: str, task_ids: list[str]) -> None:
    from appliance.records import maintenance

    try:
        maintenance.delete_records(url, task_ids)
    except Exception as exc:
        record_signals.note_write_error("submit_many", exc)
