"""Names and tunable defaults, each with the reason for its value (Redis keys: keys.py)."""

from __future__ import annotations

# Header stamped on every published message: the health check measures queue age from it.
ENQUEUED_AT_HEADER = "enqueued_at"

# Default broker: a local Redis, database 0; results go to database 1 of the same server
# so `FLUSHDB` on one never touches the other.
DEFAULT_BROKER_URL = "redis://127.0.0.1:6379/0"
DEFAULT_RESULT_DB = 1

# Queues every install has; routes and worker groups refer to these by name.
# "celery" is Celery's own default queue (exchange "celery", routing key "celery"): a
# plain Celery client that knows nothing of the appliance sends there, so the default
# group consumes it too. The appliance's own publishers keep DEFAULT_QUEUE.
CELERY_DEFAULT_QUEUE = "celery"
DEFAULT_QUEUES = ("default", "high", "low", CELERY_DEFAULT_QUEUE)
DEFAULT_QUEUE = "default"
DEFAULT_WORKER_GROUPS = "default=" + ",".join(DEFAULT_QUEUES)

# Time limits (seconds). The hard limit kills a runaway child; the soft one lets the
# task clean up first. The visibility timeout must exceed the hard limit, else kombu
# redelivers a task that is still running.
DEFAULT_SOFT_TIME_LIMIT = 300
DEFAULT_TIME_LIMIT = 360
DEFAULT_VISIBILITY_TIMEOUT = 3600

# Recycling: a child is replaced after this many tasks / this much memory (KiB),
# bounding slow leaks in user code without a restart of the whole worker.
DEFAULT_MAX_TASKS_PER_CHILD = 1000
DEFAULT_MAX_MEMORY_PER_CHILD_KIB = 512 * 1024

# Task records older than this are removed by the nightly `appliance.cleanup_records`.
DEFAULT_RECORD_RETENTION_DAYS = 30
CLEANUP_HOUR_UTC = 2

# Results live in the result backend only as long as a waiting client needs them;
# the task records keep the durable copy. Never 0: that breaks chords (celery #5237).
RESULT_EXPIRES_SECONDS = 24 * 3600

# How often kombu sweeps for unacked messages whose visibility timeout has passed.
# Stock kombu scans only every 10th call of a 10 s timer (100 s); we scan on every call.
UNACKED_RESTORE_INTERVAL = 5
UNACKED_RESTORE_THROTTLE = 1
# kombu's restore sweep holds a mutex key in Redis; a sweep that fails half-way (Redis
# refusing writes) cannot delete it, and stock kombu's 300 s expiry then stops every
# worker's sweep for five minutes. A sweep takes well under a second.
UNACKED_MUTEX_EXPIRE = 30

# Socket timeouts (seconds) so a dead Redis socket never hangs a worker or a publisher.
REDIS_SOCKET_TIMEOUT = 10.0
REDIS_CONNECT_TIMEOUT = 4.0
REDIS_HEALTH_CHECK_INTERVAL = 10

# A publisher gives up after about this many seconds and says the broker is down,
# instead of retrying forever (stock Celery retries 3 times with up to 1 s pauses).
PUBLISH_MAX_RETRIES = 3
# A publisher (`appliance submit`, appliance.submit) waits this long for Redis to answer,
# once: a Redis that accepts connections but does not answer (paused, swapping, stuck)
# fails the submit in about this time instead of four worker-sized socket timeouts.
PUBLISH_SOCKET_TIMEOUT = 2.0

# A record write waits at most this long for a locked SQLite file or a slow
# PostgreSQL before it is counted as failed; the task itself goes on regardless.
DB_LOCK_TIMEOUT_SECONDS = 2.0
# A task's record turns STARTED once it has run this long (looked at every as long, so
# within twice this); a shorter task gets one record write (its final state, with
# started_at) instead of two, halving the record writes of short tasks.
RECORD_STARTED_DELAY_SECONDS = 0.2
DB_CONNECT_TIMEOUT_SECONDS = 3

# Margin added to the longest hard time limit for stop timeouts (systemd
# TimeoutStopSec, supervisord stopwaitsecs): time to ack, write records and exit.
STOP_TIMEOUT_MARGIN_SECONDS = 30

# A worker whose shutdown has not ended this long after its pool stopped exits anyway
# (exit code SHUTDOWN_HUNG), so that systemd or supervisord restart it: what is left then
# (closing connections, restoring unacked messages) takes a second or two.
SHUTDOWN_AFTER_POOL_SECONDS = 30.0

# State directory defaults, in order: systemd's $STATE_DIRECTORY, the system
# directory when it exists and is writable, else the user's XDG state home.
SYSTEM_STATE_DIR = "/var/lib/appliance"
SYSTEM_ENV_FILE = "/etc/appliance/appliance.env"

# `appliance up` keeps its private Redis, supervisord and the URL file here
# (relative to the state dir), so other commands on the same state dir find it.
EMBEDDED_DIR = "embedded"
EMBEDDED_BROKER_FILE = "broker.url"
# `appliance up --flower` without FLOWER_BASIC_AUTH: the generated USER:PASSWORD (0600).
EMBEDDED_FLOWER_CREDENTIALS_FILE = "flower-credentials"

# Task states of the records: Celery's, plus PROGRESS from `appliance.progress.report`.
TASK_STATES = ("PENDING", "STARTED", "PROGRESS", "SUCCESS", "FAILURE", "RETRY", "REVOKED")
TERMINAL_STATES = ("SUCCESS", "FAILURE", "REVOKED")

BEAT_SCHEDULE_FILE = "beat-schedule"
SQLITE_FILE = "appliance.db"

# Heartbeats: what the health check reads. Each worker node refreshes its key every
# HEARTBEAT_INTERVAL seconds; a key that outlives HEARTBEAT_TTL means the node is gone.
HEARTBEAT_INTERVAL = 10
HEARTBEAT_TTL = 30

# Dead letters: messages a worker cannot run (unknown task, undecodable or garbage body),
# kept with their raw bytes instead of being dropped as stock Celery does.

# Revokes persisted in Redis (id -> time), loaded by every worker at start: stock Celery
# keeps them only in the memory of the workers running at the time. Kept this long.
REVOKED_KEEP_SECONDS = 30 * 24 * 3600
# Ids revoked with --terminate (zset, score = when): a consumers unit's parent kills the
# consumer running one (its loop runs the task, so it cannot read the broadcast).
TERMINATE_KEEP_SECONDS = 24 * 3600

# Beat: one active beat across hosts holds the lease; every tick renews it and writes
# the tick key. The loop interval stays well under the lease TTL and WatchdogSec/2.
DEFAULT_BEAT_LEASE_TTL = 30
BEAT_MAX_LOOP_INTERVAL = 5

# Recycling (helper)
# A child's task limit is drawn in [N - 10 %, N + 10 %], so that children started
# together are not all replaced together.
RECYCLE_TASK_JITTER = 0.1
# Above its RSS limit a child re-reads its unique memory (a 1-2 ms page-table walk) at
# most this often, unless RSS grew past the headroom left at the last reading.
USS_RECHECK_SECONDS = 1.0
# After its last task a child waits until the main process has counted its result,
# polling this often (billiard polls every 100 ms while the slot sits idle), at most
# CHILD_EXIT_WAIT_SECONDS.
CHILD_EXIT_POLL_SECONDS = 0.001
CHILD_EXIT_WAIT_SECONDS = 30.0
# Without pidfds a child's exit is seen through a pipe that closes a moment before the
# child can be reaped: retry the reaping after this delay, doubling up to the maximum.
REAP_RETRY_FIRST_SECONDS = 0.001
REAP_RETRY_MAX_SECONDS = 0.5

# Idempotent tasks (appliance/idempotency.py): one key per task name and idempotency key,
# holding "running" while the body runs and then its result, so a duplicate delivery gets
# that result instead of running the body again. Kept as long as results (a day).
IDEMPOTENCY_TTL_SECONDS = RESULT_EXPIRES_SECONDS
# A duplicate that finds the first delivery still running retries after this many seconds.
IDEMPOTENCY_BUSY_RETRY_SECONDS = 5

# Final record writes a consumers unit keeps in its Redis journal before its consumers
# write directly again (appliance/records/journal.py): ~300 B an entry, ~60 MB at most,
# so a long database outage cannot fill a noeviction Redis.
RECORDS_JOURNAL_CAP = 200_000
# JSON {waiting, since, error}, TTL 30 s: written by a unit's parent while its journal
# cannot be written to the database; `appliance health` reports it (record_journal).
RECORDS_JOURNAL_WAITING_TTL = 30

# A purged task's id is remembered this long (keys.PURGED_KEY): far longer than the
# reconciler's min age, so its record is settled REVOKED before the id is forgotten.
PURGED_KEEP_SECONDS = 7 * 24 * 3600
