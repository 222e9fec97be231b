"""Every Redis key the appliance reads or writes, each with what it holds.

The appliance's own keys carry one prefix, so ``SCAN appliance:*`` finds all of them and
nothing of Celery's or kombu's; kombu's keys that the appliance reads are named here too.
Other modules import these names and never spell a key themselves.
"""

from __future__ import annotations

KEY_PREFIX = "appliance:"

# Heartbeats: JSON, one per worker node, with a TTL (constants.HEARTBEAT_TTL); a key
# that outlives its TTL means the node is gone.
WORKER_HEARTBEAT_KEY = KEY_PREFIX + "worker:{hostname}"

# Dead letters: messages a worker cannot run (unknown task, undecodable or garbage body),
# kept with their raw bytes instead of being dropped as stock Celery does.
DEADLETTER_KEY = KEY_PREFIX + "deadletter"  # hash: id -> JSON entry
DEADLETTER_INDEX_KEY = KEY_PREFIX + "deadletter:index"  # sorted set: id -> time stored

# Revokes persisted in Redis (zset: id -> time), loaded by every worker at start: stock
# Celery keeps them only in the memory of the workers running at the time.
REVOKED_KEY = KEY_PREFIX + "revoked"
# Ids revoked with --terminate (zset, score = when): a consumers unit's parent kills the
# consumer running one (its loop runs the task, so it cannot read the broadcast).
TERMINATE_KEY = KEY_PREFIX + "terminate"

# Beat: one active beat across hosts holds the lease; every tick renews it and writes
# the tick key.
BEAT_LEASE_KEY = KEY_PREFIX + "beat:lease"  # value: the leader's random token
BEAT_TICK_KEY = KEY_PREFIX + "beat:tick"  # JSON: leader, last tick, next due entry
BEAT_LAST_RUN_KEY = KEY_PREFIX + "beat:last-run"  # hash: entry name -> last run (epoch s)

# Task ids whose message a purge deleted (zset: id -> when), kept for
# constants.PURGED_KEEP_SECONDS: the reconciler marks such a record REVOKED instead of
# taking it for a task whose message Redis lost.
PURGED_KEY = KEY_PREFIX + "purged"

# The reconciler's lease: one reconciler at a time across the fleet.
RECONCILE_LOCK_KEY = KEY_PREFIX + "reconcile:lock"

# Worker losses of one task (an integer with a TTL), counted against
# APPLIANCE_MAX_WORKER_LOST before the message is dead-lettered.
LOST_KEY_PREFIX = KEY_PREFIX + "lost:"

# Idempotent tasks: one key per task name and idempotency key, holding "running" while
# the body runs and then its result.
IDEMPOTENCY_KEY_PREFIX = KEY_PREFIX + "idem:"

# Final record writes of a consumers unit, carried with the ack (records/journal.py).
RECORDS_JOURNAL_KEY = KEY_PREFIX + "records:journal:{node}"  # list, one per consumers unit
# JSON {waiting, since, error}, with a TTL: written by a unit's parent while its journal
# cannot be written to the database; `appliance health` reports it (record_journal).
RECORDS_JOURNAL_WAITING_KEY = KEY_PREFIX + "records:journal-waiting:{node}"

# kombu's Redis transport: the messages delivered and not yet acked (hash tag -> message)
# and when each was delivered (zset tag -> time); its restore sweep requeues those older
# than the visibility timeout.
UNACKED_KEY = "unacked"
# A queue's lists: priority sub-queues are "<queue>\x06\x16<step>" for kombu's default
# steps 3, 6, 9; step 0 is the queue's own list.
PRIORITY_SEP = "\x06\x16"
PRIORITY_STEPS = (0, 3, 6, 9)
UNACKED_INDEX_KEY = "unacked_index"
# kombu's bindings: one set per exchange (``_kombu.binding.<exchange>``), members
# "routing_key<sep>pattern<sep>queue": the queue lists producers and workers declared
# (appliance health: queues no worker group consumes).
KOMBU_BINDING_PATTERN = "_kombu.binding.*"
KOMBU_BINDING_SEP = "\x06\x16"

# Replies to `celery inspect`/`control` broadcasts: kombu's reply lists, one per caller;
# left behind when a caller dies before it reads them.
PIDBOX_REPLY_PATTERN = "*.reply.celery.pidbox"


def queue_keys(queue: str) -> list[str]:
    """The Redis lists of *queue*, highest priority first (as kombu's BRPOP reads them)."""
    return [queue if step == 0 else f"{queue}{PRIORITY_SEP}{step}" for step in PRIORITY_STEPS]
