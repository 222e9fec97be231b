"""The reconciler's view of Redis: the messages it holds, what the workers hold, the
results stored, and a re-publish (the policy that uses it is recovery.reconcile)."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Protocol

from appliance.broker import scripts
from appliance.config.settings import Settings
from appliance.core import keys

# Long enough for a scan of a big backlog; renewed before every publish.
LOCK_TTL_SECONDS = 120.0
# Queue items read (and decoded on the server) per script call: keeps Redis responsive.
SCAN_CHUNK = 1000
# How long live workers get to say which of the missing ids they hold in memory.
WORKER_QUERY_TIMEOUT = 1.0


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
    def purged(self, ids: Sequence[str]) -> set[str]: ...
    def republish(self, record: dict[str, Any]) -> None: ...
    def close(self) -> None: ...


@contextmanager
def broker_errors(settings: Settings) -> Iterator[None]:
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
            task_id = unacked_task_id(raw)
            if task_id:
                ids.add(task_id)
        return ids

    def purged(self, ids: Sequence[str]) -> set[str]:
        """Which of *ids* had their message deleted by a purge (broker.purge)."""
        from appliance.broker.purge import purged_among

        return purged_among(self.client, list(ids))

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


def unacked_task_id(raw: bytes) -> str | None:
    """The task id in an ``unacked`` hash value: JSON ``[message, exchange, routing_key]``."""
    try:
        return str(json.loads(raw)[0]["headers"]["id"])
    except (ValueError, KeyError, IndexError, TypeError):
        return None
