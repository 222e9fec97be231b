"""The dead-letter store: messages the worker could not run, kept with their raw bytes.

Stock Celery logs and drops an unknown task name or an undecodable body, and kombu
exits on a non-JSON item in a queue list. The appliance keeps each such message in
Redis (a hash of entries plus a time index) and, when the task id is known, gives it a
FAILURE record, so an operator can inspect, requeue or drop it.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from dataclasses import asdict, dataclass
from typing import Any

import redis

from appliance.core import keys


@dataclass(frozen=True)
class DeadLetter:
    """One message that could not be run."""

    id: str
    reason: str
    queue: str | None
    stored_at: float
    raw_b64: str  # the exact bytes as they sat in the queue list
    task_id: str | None = None
    task_name: str | None = None
    requeueable: bool = False  # a well-formed kombu message (e.g. for a task now deployed)

    @property
    def raw(self) -> bytes:
        return base64.b64decode(self.raw_b64)

    def to_dict(self, with_raw: bool = True) -> dict[str, Any]:
        data = asdict(self)
        if with_raw:
            data["raw"] = self.raw.decode("utf-8", errors="backslashreplace")
        else:
            data.pop("raw_b64")
        return data


def make(
    raw: bytes,
    reason: str,
    queue: str | None,
    task_id: str | None = None,
    task_name: str | None = None,
    requeueable: bool = False,
) -> DeadLetter:
    return DeadLetter(
        id=task_id or f"raw-{uuid.uuid4()}",
        reason=reason[:1000],
        queue=queue,
        stored_at=time.time(),
        raw_b64=base64.b64encode(raw).decode(),
        task_id=task_id,
        task_name=task_name,
        requeueable=requeueable,
    )


def store(client: redis.Redis, letter: DeadLetter) -> None:
    pipe = client.pipeline(transaction=True)
    pipe.hset(keys.DEADLETTER_KEY, letter.id, json.dumps(asdict(letter)))
    pipe.zadd(keys.DEADLETTER_INDEX_KEY, {letter.id: letter.stored_at})
    pipe.execute()


def _parse(raw: bytes | str | None) -> DeadLetter | None:
    if not raw:
        return None
    return DeadLetter(**json.loads(raw))


def get(client: redis.Redis, letter_id: str) -> DeadLetter | None:
    return _parse(client.hget(keys.DEADLETTER_KEY, letter_id))


def list_letters(client: redis.Redis, limit: int = 100) -> list[DeadLetter]:
    """Newest first."""
    ids = [
        str(i, "utf-8") if isinstance(i, bytes) else str(i)
        for i in client.zrevrange(keys.DEADLETTER_INDEX_KEY, 0, limit - 1)
    ]
    if not ids:
        return []
    return [d for d in (_parse(raw) for raw in client.hmget(keys.DEADLETTER_KEY, ids)) if d]


def count(client: redis.Redis) -> int:
    return int(client.zcard(keys.DEADLETTER_INDEX_KEY))


def drop(client: redis.Redis, letter_id: str) -> bool:
    pipe = client.pipeline(transaction=True)
    pipe.hdel(keys.DEADLETTER_KEY, letter_id)
    pipe.zrem(keys.DEADLETTER_INDEX_KEY, letter_id)
    removed, _ = pipe.execute()
    return bool(removed)


def requeue(client: redis.Redis, letter: DeadLetter, queue: str | None = None) -> str:
    """Put the message back on its queue (atomically with its removal); return the queue."""
    target = queue or letter.queue
    if not target:
        raise ValueError("the dead letter has no queue; name one")
    pipe = client.pipeline(transaction=True)
    pipe.lpush(target, letter.raw)
    pipe.hdel(keys.DEADLETTER_KEY, letter.id)
    pipe.zrem(keys.DEADLETTER_INDEX_KEY, letter.id)
    pipe.execute()
    return target
