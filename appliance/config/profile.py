"""The production profile: Celery configuration built from the appliance settings.

Each non-default setting says in one line why it is set.
"""

from __future__ import annotations

from typing import Any

from celery.schedules import crontab
from kombu.entity import Exchange, Queue

from appliance.config.settings import Settings
from appliance.core import constants as C

BUILTIN_TASK_MODULES = ("appliance.tasks.builtin", "appliance.tasks.demo")


def _redis_socket_options() -> dict[str, Any]:
    return {
        # A dead Redis socket errors out instead of hanging a worker or a publisher.
        "socket_timeout": C.REDIS_SOCKET_TIMEOUT,
        "socket_connect_timeout": C.REDIS_CONNECT_TIMEOUT,
        "socket_keepalive": True,
        # Ping idle connections so half-open ones are found and replaced.
        "health_check_interval": C.REDIS_HEALTH_CHECK_INTERVAL,
    }


def _sentinel_options(settings: Settings, url: str) -> dict[str, Any]:
    # sentinel:// URLs: kombu and Celery ask the sentinels for this master's address on
    # every new connection, so a worker follows a failover without a restart.
    if not url.startswith("sentinel://") or not settings.redis_sentinel_master:
        return {}
    return {
        "master_name": settings.redis_sentinel_master,
        # The sentinels answer in milliseconds or not at all: do not hang on a dead one.
        "sentinel_kwargs": {
            "socket_timeout": C.REDIS_CONNECT_TIMEOUT,
            "socket_connect_timeout": C.REDIS_CONNECT_TIMEOUT,
        },
    }


def celery_config(settings: Settings) -> dict[str, Any]:
    """The Celery configuration of the production profile."""
    queues = [
        Queue(name, Exchange(name, type="direct"), routing_key=name) for name in settings.queues
    ]
    return {
        "broker_url": settings.broker_url,
        "result_backend": settings.effective_result_backend,
        "imports": (*BUILTIN_TASK_MODULES, *settings.task_modules),
        # JSON only: pickle would let anyone who can write to Redis run code on the workers.
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        "task_serializer": "json",
        "result_serializer": "json",
        "timezone": settings.timezone,
        "enable_utc": True,
        # Ack after the task ran: a worker that dies mid-task leaves the message to another.
        "task_acks_late": True,
        # A child killed mid-task (OOM killer, SIGKILL) requeues its task instead of failing it.
        "task_reject_on_worker_lost": True,
        # Reserve one message per process by default: prefetched messages wait behind long
        # tasks. Short-task fleets raise it (APPLIANCE_PREFETCH_MULTIPLIER; see
        # docs/configuration.md, Settings).
        "worker_prefetch_multiplier": settings.prefetch_multiplier,
        # The records show STARTED (with worker and time); storing it in the result backend
        # too would cost two Redis round trips per task. Without records, the backend has it.
        "task_track_started": not settings.records_enabled,
        # Results are for waiting clients; the records keep them. Bounded, never 0 (celery #5237).
        "result_expires": C.RESULT_EXPIRES_SECONDS,
        "task_soft_time_limit": settings.task_soft_time_limit,
        "task_time_limit": settings.task_time_limit,
        "worker_max_tasks_per_child": settings.max_tasks_per_child or None,
        "worker_max_memory_per_child": settings.max_memory_per_child or None,
        "broker_transport_options": {
            # Longer than the hard time limit (checked by the settings), else running
            # tasks are delivered twice.
            "visibility_timeout": settings.visibility_timeout,
            # Sweep for a dead worker's unacked messages every few seconds, not every 100 s.
            "unacked_restore_interval": C.UNACKED_RESTORE_INTERVAL,
            "unacked_restore_throttle": C.UNACKED_RESTORE_THROTTLE,
            "unacked_mutex_expire": C.UNACKED_MUTEX_EXPIRE,
            **_redis_socket_options(),
            **_sentinel_options(settings, settings.broker_url),
        },
        "result_backend_transport_options": {
            "visibility_timeout": settings.visibility_timeout,
            **_sentinel_options(settings, settings.effective_result_backend),
        },
        "redis_socket_timeout": C.REDIS_SOCKET_TIMEOUT,
        "redis_socket_connect_timeout": C.REDIS_CONNECT_TIMEOUT,
        "redis_socket_keepalive": True,
        "redis_backend_health_check_interval": C.REDIS_HEALTH_CHECK_INTERVAL,
        "redis_retry_on_timeout": True,
        # Storing a result survives a Redis blip instead of failing a finished task.
        "result_backend_always_retry": True,
        "result_backend_max_retries": 10,
        # The worker waits for Redis at start instead of exiting (systemd ordering is loose).
        "broker_connection_retry_on_startup": True,
        "broker_connection_timeout": C.REDIS_CONNECT_TIMEOUT,
        # Publishers give up after a few seconds with an error instead of hanging.
        "task_publish_retry_policy": {
            "max_retries": C.PUBLISH_MAX_RETRIES,
            "interval_start": 0,
            "interval_step": 0.5,
            "interval_max": 1,
        },
        # True loses tasks on a Redis restart when results share the Redis: they end REVOKED
        # and are acked. False lets them finish and ack on the new connection.
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        "task_queues": queues,
        "task_default_queue": settings.default_queue,
        "task_default_exchange": settings.default_queue,
        "task_default_routing_key": settings.default_queue,
        "task_create_missing_queues": False,
        # A chord's error callback also hears of the header member that failed (with its
        # own error), not only of the callback's ChordError; Celery's announced default.
        "task_allow_error_cb_on_chord_header": True,
        "task_routes": (_Router(settings),),
        # Task events only on request (APPLIANCE_TASK_EVENTS): each is a publish per task
        # state change, for monitors (Flower, `celery events`) that the appliance does not
        # need. With them off the workers still send worker events (online, heartbeat,
        # offline), so `celery control enable_events` can turn task events on at run time
        # (appliance/worker/launch.py, worker_argv). task-sent is the publisher's (submit).
        "worker_send_task_events": settings.task_events,
        "task_send_sent_event": settings.task_events,
        "beat_schedule": {
            "appliance-cleanup-records": {
                "task": "appliance.cleanup_records",
                "schedule": crontab(hour=C.CLEANUP_HOUR_UTC, minute=0),
            },
            # Re-publish tasks whose record is PENDING but whose message Redis lost
            # (appliance/recovery/reconcile.py: SCHEDULE_SECONDS); a run not started
            # within its interval expires, so a backlog does not pile up reconciler runs.
            "appliance-reconcile": {
                "task": "appliance.reconcile",
                "schedule": 60.0,
                "options": {"expires": 60.0},
            },
        },
        "worker_hijack_root_logger": True,
        # Messages Celery would drop (unknown task, undecodable body) are dead-lettered.
        "worker_consumer": "appliance.worker.consumer:Consumer",
    }


class _Router:
    """Routes task names to queues by the glob patterns of APPLIANCE_ROUTES."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings

    def __call__(self, name: str, *_: Any, **__: Any) -> dict[str, str] | None:
        queue = self._settings.route_for(name)
        return {"queue": queue} if queue else None
