"""Running the Celery worker and beat of the appliance in the foreground."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from appliance.config.settings import Settings
from appliance.errors import ConfigError, DatabaseUnavailableError

if TYPE_CHECKING:
    from appliance.worker.consumers.process import ConsumerLimits, ConsumerProcessState
    from appliance.worker.supervision import Supervision

logger = logging.getLogger("appliance.runtime")

# Celery's documented hook for an out-of-tree pool is `--pool custom`.
POOL_ALIAS = "custom"


@dataclass(frozen=True)
class WorkerOptions:
    """What `appliance worker` was asked for; None means: from settings."""

    group: str = "default"
    queues: tuple[str, ...] = ()
    concurrency: int | None = None
    max_tasks_per_child: int | None = None
    max_memory_per_child: int | None = None
    loglevel: str | None = None
    topology: str | None = None


def worker_queues(settings: Settings, options: WorkerOptions) -> list[str]:
    """The queues a worker consumes: explicit ones, else those of its group."""
    if options.queues:
        unknown = [q for q in options.queues if q not in settings.queues]
        if unknown:
            raise ConfigError(
                f"unknown queue(s) {', '.join(unknown)}; fix: use queues from APPLIANCE_QUEUES "
                f"({', '.join(settings.queues)})"
            )
        return list(options.queues)
    if options.group not in settings.worker_groups:
        raise ConfigError(
            f"unknown worker group {options.group!r}; fix: use one of "
            f"{', '.join(settings.worker_groups)} or define it in APPLIANCE_WORKER_GROUPS"
        )
    return settings.worker_groups[options.group]


def recycle_limits(settings: Settings, options: WorkerOptions) -> tuple[int, int]:
    """Tasks and KiB after which a child (or consumer) is replaced; 0 = never."""
    max_tasks = (
        options.max_tasks_per_child
        if options.max_tasks_per_child is not None
        else settings.max_tasks_per_child
    )
    max_memory = (
        options.max_memory_per_child
        if options.max_memory_per_child is not None
        else settings.max_memory_per_child
    )
    return max_tasks, max_memory


def select_pool(pool: type) -> list[str]:
    """Register *pool* (a TaskPool class) as Celery's ``custom`` pool; the worker arguments
    that pick it."""
    from celery import concurrency

    concurrency.ALIASES[POOL_ALIAS] = f"{pool.__module__}:{pool.__qualname__}"
    return ["--pool", POOL_ALIAS]


def worker_argv(
    settings: Settings, options: WorkerOptions, consumer: int | None = None
) -> list[str]:
    """Arguments for Celery's worker command (tested without starting anything); with
    *consumer*, those of that consumer process of the consumers topology."""
    max_tasks, max_memory = recycle_limits(settings, options)
    hostname = f"{options.group}@%h" if consumer is None else f"{options.group}.{consumer}@%h"
    argv = [
        "worker",
        "--queues",
        ",".join(worker_queues(settings, options)),
        "--hostname",
        hostname,
        "--loglevel",
        options.loglevel or settings.log_level,
        # Celery's event heartbeat stays on (there is no --without-heartbeat): without it,
        # gossip and task events Celery disables its Events step, and then `celery control
        # enable_events` answers "event dispatcher unavailable" and monitors (Flower,
        # `celery events`) see no worker. It costs a PUBLISH (worker-heartbeat, about
        # 0.7 KB) every 2 s per node, which nobody stores, on one more Redis connection per
        # node; it is not the broker heartbeat, which Redis does not have. Task events are
        # APPLIANCE_TASK_EVENTS (-E below).
        # Gossip stays off: it would make every node consume every other node's events
        # (each heartbeat and task event delivered once per node), for worker join/leave
        # callbacks and clock sync the appliance does not use (beat leads by a Redis lease;
        # health reads the appliance's own heartbeat keys).
        "--without-gossip",
        # Mingle asks the other workers for their revokes at every start and reconnect and
        # waits 1 s for answers; revokes are kept in Redis and loaded at start instead
        # (operations.py), and under repeated connection kills the wait starved the
        # consumer.
        "--without-mingle",
    ]
    if settings.task_events:
        argv.append("--task-events")  # -E, as the profile's worker_send_task_events says
    if consumer is not None:
        # One process that runs its tasks inline; recycling is its pool's own
        # (appliance/worker/consumers/pool.py, its limits in its process state).
        from appliance.worker.consumers.pool import TaskPool as ConsumerPool

        return [*argv, "--concurrency", "1", *select_pool(ConsumerPool)]
    concurrency = options.concurrency or settings.concurrency
    if concurrency:
        argv += ["--concurrency", str(concurrency)]
    if max_tasks:
        argv += ["--max-tasks-per-child", str(max_tasks)]
    if max_memory:
        argv += ["--max-memory-per-child", str(max_memory)]
    # Our pool: cheap recycling, judged by a child's unique memory
    # (appliance/worker/prefork/pool.py).
    from appliance.worker.prefork.pool import TaskPool as PreforkPool

    argv += select_pool(PreforkPool)
    # Celery reads a 0 flag as "not given" and falls back to the profile, which holds the
    # setting; a flag's 0 ("never") must override it as configuration, after "--", last.
    never = [
        f"worker_{name}=(json)null"
        for name, flag, setting in (
            ("max_tasks_per_child", options.max_tasks_per_child, settings.max_tasks_per_child),
            ("max_memory_per_child", options.max_memory_per_child, settings.max_memory_per_child),
        )
        if flag == 0 and setting
    ]
    if never:
        argv += ["--", *never]
    return argv


def prepare_database(settings: Settings) -> None:
    """Bring the record schema up to date at start, or refuse (docs/install.md, The record schema).

    A database that is down does not stop the worker: tasks run, record writes are
    counted as failed, and the gap is reported.
    """
    if not settings.records_enabled:
        return
    from appliance.records import schema

    try:
        schema.ensure_current(
            settings.effective_database_url, auto_upgrade=settings.db_auto_upgrade
        )
    except DatabaseUnavailableError as exc:
        logger.warning("%s; starting anyway, task records will be missing", exc)


def run_worker(settings: Settings, options: WorkerOptions) -> int:
    """Run the worker in the foreground until it stops; return its exit code."""
    argv = worker_argv(settings, options)
    from appliance.worker.preflight import refuse_evicting_broker, refuse_missing_channels

    refuse_evicting_broker(settings)
    refuse_missing_channels(settings)
    prepare_database(settings)
    from appliance.celery_app import load_tasks
    from appliance.worker import supervision as worker_step

    worker_step.supervision = worker_step.Supervision.capture(
        group=options.group,
        queues=worker_queues(settings, options),
        broker_url=settings.broker_url,
        stop_timeout=settings.stop_timeout,
    )
    app = load_tasks()
    worker_step.install(app)
    if (options.topology or settings.worker_topology) == "consumers":
        return run_consumers(app, settings, options)
    return start_celery(app, argv)


def run_consumers(app: Any, settings: Settings, options: WorkerOptions) -> int:
    """The consumers topology: N consumer processes under this one
    (appliance/worker/consumers/supervisor.py)."""
    import os

    from appliance.worker import events as worker_events
    from appliance.worker import supervision as worker_step
    from appliance.worker.consumers.parent import log_to_stderr, preload_worker_modules
    from appliance.worker.consumers.process import ConsumerLimits, become_consumer
    from appliance.worker.consumers.supervisor import Supervisor

    log_to_stderr(options.loglevel or settings.log_level)
    preload_worker_modules()
    worker_events.install(app)  # each consumer's event heartbeat, from a thread
    limits = ConsumerLimits(*recycle_limits(settings, options))
    count = options.concurrency or settings.concurrency or os.cpu_count() or 1
    supervision = worker_step.supervision
    from appliance.broker.admin import connect

    # The parent's own client (redis-py pools are fork-safe): journal flushes, terminates.
    client = connect(
        settings.broker_url,
        settings.redis_sentinel_master,
        socket_timeout=2,
        socket_connect_timeout=2,
    )
    from celery.utils.nodenames import host_format

    node = host_format(f"{options.group}@%h")
    flusher = records_flusher(settings, node, client)
    journal = flusher.key if flusher is not None else None

    def run_consumer(index: int, report_fd: int, gate_fd: int) -> int:
        from appliance.worker.consumers.pool import share_rate_limits

        become_consumer(
            consumer_state(settings, supervision, limits, journal, report_fd, gate_fd, count)
        )
        share_rate_limits(app, count)
        argv = worker_argv(settings, options, consumer=index)
        if gate_fd >= 0:
            # A successor started ahead (a recycle): without Celery's banner, which is
            # about a sixth of a consumer's start and says what the first one said.
            argv = ["--quiet", *argv]
        return start_celery(app, argv)

    queues = ",".join(worker_queues(settings, options))
    return Supervisor(
        count=count,
        run_consumer=run_consumer,
        stop_timeout=float(settings.stop_timeout),
        notifier=supervision.notifier,
        watchdog=supervision.watchdog,
        describe=f"{node}: consuming {queues}; ",
        flusher=flusher,
        redis=client,
        limits=limits,
    ).run()


def consumer_state(
    settings: Settings,
    supervision: Supervision,
    limits: ConsumerLimits,
    journal: str | None,
    report_fd: int,
    gate_fd: int,
    consumers: int = 1,
) -> ConsumerProcessState:
    """What a consumer process is (appliance/worker/consumers/process.py): its link to the
    parent through *report_fd* and *gate_fd*, the unit's *supervision* reporting there,
    its recycling *limits*, what its acks carry (results on the broker's own server, and
    the unit's record *journal*), and how many *consumers* its unit runs."""
    from appliance.broker.result_backend import databases_on_one_server
    from appliance.worker.consumers.process import ConsumerProcessState
    from appliance.worker.consumers.protocol import (
        CONSUMER_PING_SECONDS,
        LinkNotifier,
        ParentLink,
    )

    link = ParentLink(report_fd, gate_fd)
    return ConsumerProcessState(
        is_consumer=True,
        link=link,
        limits=limits,
        results_with_ack=databases_on_one_server(
            settings.broker_url, settings.effective_result_backend
        ),
        records_journal=journal,
        consumers=consumers,
        supervision=dataclasses.replace(
            supervision, notifier=LinkNotifier(link), watchdog=CONSUMER_PING_SECONDS
        ),
    )


def records_flusher(settings: Settings, node: str, client: Any) -> Any:
    """The journal flusher of the consumers unit *node* (appliance/records/journal.py), if
    records are on."""
    url = settings.records_url
    if url is None:
        return None
    from appliance.records.journal import Flusher

    return Flusher(client, node, url)


def start_celery(app: Any, argv: list[str]) -> int:
    """Run Celery's command line on *app*; return the command's exit code.

    Celery's own `app.start` drops it (it returns only a click `Exit` raised past
    `main`), so a worker that stops on an unrecoverable error would exit 0 and neither
    systemd (Restart=on-failure) nor supervisord would restart it.
    """
    from celery.bin.celery import celery
    from click.exceptions import Exit

    celery.params[0].default = app
    try:
        code = celery.main(args=argv, standalone_mode=False)
    except Exit as exc:
        code = exc.exit_code
    finally:
        celery.params[0].default = None
    return int(code or 0)


def beat_argv(settings: Settings, loglevel: str | None = None) -> list[str]:
    """Arguments for Celery's beat command; the schedule state lives in the state dir.

    The leader scheduler sends only while it holds the beat lease in Redis, so beat may
    run on every host; stock beat may sleep 300 s, ours ticks (and renews) more often.
    """
    from appliance.core.constants import BEAT_MAX_LOOP_INTERVAL, BEAT_SCHEDULE_FILE

    return [
        "beat",
        "--scheduler",
        "appliance.beat.scheduler:LeaderScheduler",
        "--max-interval",
        str(BEAT_MAX_LOOP_INTERVAL),
        "--schedule",
        str(settings.state_dir / BEAT_SCHEDULE_FILE),
        "--loglevel",
        loglevel or settings.log_level,
    ]


def run_beat(settings: Settings, loglevel: str | None = None) -> int:
    """Run beat in the foreground until it stops; return its exit code."""
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    prepare_database(settings)
    from appliance.celery_app import load_tasks

    return start_celery(load_tasks(), beat_argv(settings, loglevel))
