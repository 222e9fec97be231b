"""The production profile: durable, JSON-only, bounded settings."""

from __future__ import annotations

import pytest

from appliance.config.profile import celery_config
from appliance.config.settings import load_settings


@pytest.fixture
def config() -> dict:
    return celery_config(load_settings())


def test_json_only_and_pickle_refused(config: dict) -> None:
    assert config["accept_content"] == ["json"]
    assert config["result_accept_content"] == ["json"]
    assert config["task_serializer"] == config["result_serializer"] == "json"


def test_no_loss_settings(config: dict) -> None:
    assert config["task_acks_late"] is True
    assert config["task_reject_on_worker_lost"] is True
    assert config["worker_prefetch_multiplier"] == 1
    assert config["worker_cancel_long_running_tasks_on_connection_loss"] is False
    assert config["broker_connection_retry_on_startup"] is True
    assert config["result_expires"] > 0


def test_unacked_messages_are_restored_within_seconds(config: dict) -> None:
    options = config["broker_transport_options"]
    assert options["visibility_timeout"] == 3600
    assert options["unacked_restore_throttle"] == 1
    assert options["unacked_restore_interval"] * options["unacked_restore_throttle"] <= 10


def test_dead_sockets_cannot_hang(config: dict) -> None:
    options = config["broker_transport_options"]
    assert options["socket_timeout"] and options["socket_connect_timeout"]
    assert options["socket_keepalive"] is True
    assert options["health_check_interval"] > 0
    assert config["redis_socket_timeout"] and config["redis_backend_health_check_interval"]


def test_queues_routes_and_limits_follow_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APPLIANCE_QUEUES", "default,report")
    monkeypatch.setenv("APPLIANCE_ROUTES", "reports.*=report")
    monkeypatch.setenv("APPLIANCE_WORKER_GROUPS", "default=default,report")
    monkeypatch.setenv("APPLIANCE_TASK_TIME_LIMIT", "120")
    monkeypatch.setenv("APPLIANCE_TASK_SOFT_TIME_LIMIT", "100")
    monkeypatch.setenv("APPLIANCE_TASK_MODULES", "myapp.tasks")
    config = celery_config(load_settings())
    assert [q.name for q in config["task_queues"]] == ["default", "report"]
    (router,) = config["task_routes"]
    assert router("reports.monthly") == {"queue": "report"}
    assert router("demo.add") is None
    assert (config["task_soft_time_limit"], config["task_time_limit"]) == (100, 120)
    assert "myapp.tasks" in config["imports"]
    assert "appliance.tasks.builtin" in config["imports"]


def test_nightly_cleanup_is_scheduled_at_two(config: dict) -> None:
    entry = config["beat_schedule"]["appliance-cleanup-records"]
    assert entry["task"] == "appliance.cleanup_records"
    assert entry["schedule"].hour == {2} and entry["schedule"].minute == {0}


def test_chords_work_and_report_failed_members(config: dict) -> None:
    # Chords need a result backend whose results outlive the header (never 0: #5237).
    assert config["result_backend"].startswith("redis://") and config["result_expires"] > 0
    assert config["task_allow_error_cb_on_chord_header"] is True


def test_the_default_group_consumes_celerys_own_default_queue(config: dict) -> None:
    """A plain Celery client (no appliance import) sends to Celery's default queue: the
    default install declares that queue exactly as Celery does and consumes it."""
    from celery import Celery

    stock = Celery(broker="memory://").amqp.queues[Celery().conf.task_default_queue]
    ours = {q.name: q for q in config["task_queues"]}[stock.name]
    declared = (ours.exchange.name, ours.exchange.type, ours.routing_key)
    assert declared == (stock.exchange.name, stock.exchange.type, stock.routing_key)
    assert declared == ("celery", "direct", "celery")
    assert stock.name in load_settings().worker_groups["default"]
    assert config["task_default_queue"] == "default"  # appliance.submit's own default


def test_task_events_follow_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    off = celery_config(load_settings())
    assert (off["worker_send_task_events"], off["task_send_sent_event"]) == (False, False)
    monkeypatch.setenv("APPLIANCE_TASK_EVENTS", "true")
    on = celery_config(load_settings())
    # Workers send task-received/started/succeeded..., publishers (submit) task-sent.
    assert (on["worker_send_task_events"], on["task_send_sent_event"]) == (True, True)
