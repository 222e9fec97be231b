"""Purging a queue: its lists deleted, the purged task ids remembered in Redis.

Both `appliance queues purge` and Celery's own `celery purge` (through the transport,
for the appliance's app) purge this way. The ids stay in ``appliance:purged`` for a
while, so the reconciler never takes a purged task for one whose message Redis lost: it
gives such a record the final state REVOKED instead of publishing it again.
"""

from __future__ import annotations

import time
from typing import Any

from appliance.broker import scripts
from appliance.core import constants as C
from appliance.core import keys

# The error of a record that ends REVOKED because its message was purged.
PURGED_REASON = "purged: its message was deleted from its queue"


def purge_list(client: Any, key: str) -> tuple[int, list[str]]:
    """Delete the list *key*; (items deleted, task ids of the messages among them)."""
    count, ids = client.eval(
        scripts.source("purge_list"), 2, key, keys.PURGED_KEY, time.time(), C.PURGED_KEEP_SECONDS
    )
    return int(count), [i.decode() if isinstance(i, bytes) else str(i) for i in ids]


def purge_queue(client: Any, queue: str) -> tuple[int, list[str]]:
    """Every list of *queue* (each priority) purged; (items deleted, task ids)."""
    total, purged = 0, []
    for key in keys.queue_keys(queue):
        count, ids = purge_list(client, key)
        total += count
        purged += ids
    return total, purged


def purged_among(client: Any, task_ids: list[str]) -> set[str]:
    """Which of *task_ids* had their message purged."""
    if not task_ids:
        return set()
    pipe = client.pipeline(transaction=False)
    for task_id in task_ids:
        pipe.zscore(keys.PURGED_KEY, task_id)
    return {t for t, score in zip(task_ids, pipe.execute(), strict=True) if score is not None}
