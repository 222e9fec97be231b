"""Settings: typed, validated, fail fast with one line naming the variable and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.config.settings import load_settings
from appliance.core.text import mask_url
from appliance.errors import ConfigError


def test_defaults_give_a_local_redis_and_sqlite_in_the_state_dir(isolated_env: Path) -> None:
    settings = load_settings()
    assert settings.broker_url == "redis://127.0.0.1:6379/0"
    assert settings.effective_result_backend == "redis://127.0.0.1:6379/1"
    assert settings.effective_database_url == f"sqlite:///{settings.state_dir}/appliance.db"
    assert settings.record_retention_days == 30
    # "celery": Celery's own default queue, where a plain Celery client sends.
    assert settings.worker_groups == {"default": ["default", "high", "low", "celery"]}
    assert settings.default_queue == "default"


def test_result_backend_defaults_to_db_1_of_the_broker(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APPLIANCE_BROKER_URL", "redis://:pw@10.0.0.5:6390/4")
    assert load_settings().effective_result_backend == "redis://:pw@10.0.0.5:6390/1"


def test_celery_variables_are_honoured_when_appliance_ones_are_absent(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CELERY_BROKER_URL", "redis://celery-host:6379/2")
    monkeypatch.setenv("CELERY_RESULT_BACKEND", "redis://celery-host:6379/3")
    settings = load_settings()
    assert settings.broker_url == "redis://celery-host:6379/2"
    assert settings.effective_result_backend == "redis://celery-host:6379/3"
    monkeypatch.setenv("APPLIANCE_BROKER_URL", "redis://appliance-host:6379/0")
    assert load_settings().broker_url == "redis://appliance-host:6379/0"


def test_env_file_is_read(isolated_env: Path) -> None:
    isolated_env.write_text("APPLIANCE_TASK_TIME_LIMIT=100\nAPPLIANCE_TASK_SOFT_TIME_LIMIT=90\n")
    settings = load_settings()
    assert (settings.task_time_limit, settings.task_soft_time_limit) == (100, 90)


def test_missing_env_file_is_a_config_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("APPLIANCE_ENV_FILE", str(tmp_path / "nope.env"))
    with pytest.raises(ConfigError, match="APPLIANCE_ENV_FILE"):
        load_settings()


@pytest.mark.parametrize(
    ("var", "value", "expected"),
    [
        ("APPLIANCE_BROKER_URL", "nonsense", "APPLIANCE_BROKER_URL"),
        ("APPLIANCE_BROKER_URL", "http://x/0", "scheme"),
        ("APPLIANCE_DATABASE_URL", "mysql://x/db", "APPLIANCE_DATABASE_URL"),
        ("APPLIANCE_VISIBILITY_TIMEOUT", "abc", "APPLIANCE_VISIBILITY_TIMEOUT"),
        ("APPLIANCE_VISIBILITY_TIMEOUT", "-5", "APPLIANCE_VISIBILITY_TIMEOUT"),
        ("APPLIANCE_MAX_TASKS_PER_CHILD", "-1", "APPLIANCE_MAX_TASKS_PER_CHILD"),
        ("APPLIANCE_TIMEZONE", "Mars/Olympus", "APPLIANCE_TIMEZONE"),
        ("APPLIANCE_QUEUES", "good,bad queue", "APPLIANCE_QUEUES"),
        ("APPLIANCE_WORKER_GROUPS", "default=nosuch", "APPLIANCE_WORKER_GROUPS"),
        ("APPLIANCE_WORKER_GROUPS", "justtext", "APPLIANCE_WORKER_GROUPS"),
        ("APPLIANCE_ROUTES", "reports.*=nosuch", "APPLIANCE_ROUTES"),
        ("APPLIANCE_LOG_LEVEL", "LOUD", "APPLIANCE_LOG_LEVEL"),
        ("APPLIANCE_RECORDS_ENABLED", "maybe", "APPLIANCE_RECORDS_ENABLED"),
        ("APPLIANCE_TASK_EVENTS", "sometimes", "APPLIANCE_TASK_EVENTS"),
    ],
)
def test_invalid_values_name_the_variable_and_the_fix(
    monkeypatch: pytest.MonkeyPatch, var: str, value: str, expected: str
) -> None:
    monkeypatch.setenv(var, value)
    with pytest.raises(ConfigError) as excinfo:
        load_settings()
    message = str(excinfo.value)
    assert expected in message
    assert "fix:" in message
    assert "\n" not in message


def test_task_events_are_off_unless_asked_for(isolated_env: Path) -> None:
    assert load_settings().task_events is False
    for value, expected in (("true", True), ("1", True), ("yes", True), ("off", False)):
        isolated_env.write_text(f"APPLIANCE_TASK_EVENTS={value}\n")
        assert load_settings().task_events is expected, value
    assert load_settings().public_dict()["task_events"] is False


def test_a_bad_task_events_value_says_how_to_write_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APPLIANCE_TASK_EVENTS", "sometimes")
    with pytest.raises(ConfigError) as excinfo:
        load_settings()
    assert excinfo.value.exit_code == 78
    assert str(excinfo.value).startswith("invalid APPLIANCE_TASK_EVENTS='sometimes'")
    assert str(excinfo.value).endswith("fix: use true or false")


def test_visibility_timeout_must_exceed_the_hard_time_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("APPLIANCE_TASK_TIME_LIMIT", "600")
    monkeypatch.setenv("APPLIANCE_VISIBILITY_TIMEOUT", "600")
    with pytest.raises(ConfigError, match=r"APPLIANCE_VISIBILITY_TIMEOUT.*redeliver"):
        load_settings()


def test_soft_limit_above_hard_limit_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APPLIANCE_TASK_SOFT_TIME_LIMIT", "500")
    with pytest.raises(ConfigError, match="APPLIANCE_TASK_SOFT_TIME_LIMIT"):
        load_settings()


def test_groups_routes_and_task_modules_parse_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APPLIANCE_QUEUES", "default,urgent,email,report")
    monkeypatch.setenv(
        "APPLIANCE_WORKER_GROUPS", "default=default;urgent=urgent;batch=email,report"
    )
    monkeypatch.setenv("APPLIANCE_ROUTES", "mail.*=email;reports.*=report")
    monkeypatch.setenv("APPLIANCE_TASK_MODULES", "myapp.tasks, other.tasks")
    settings = load_settings()
    assert settings.worker_groups["batch"] == ["email", "report"]
    assert settings.route_for("mail.send") == "email"
    assert settings.route_for("demo.add") is None
    assert settings.task_modules == ["myapp.tasks", "other.tasks"]


def test_passwords_are_masked_in_the_public_view(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APPLIANCE_BROKER_URL", "redis://:s3cret@127.0.0.1:6379/0")
    monkeypatch.setenv("APPLIANCE_DATABASE_URL", "postgresql://app:hunter2@db/appliance")
    shown = str(load_settings().public_dict())
    assert "s3cret" not in shown and "hunter2" not in shown
    assert "redis://:****@127.0.0.1:6379/0" in shown


def test_a_bad_url_with_a_password_does_not_leak_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APPLIANCE_BROKER_URL", "http://:s3cret@host/0")
    with pytest.raises(ConfigError) as excinfo:
        load_settings()
    assert "s3cret" not in str(excinfo.value)


def test_mask_url_keeps_urls_without_password() -> None:
    assert mask_url("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"
    assert mask_url("postgresql://u:p@[::1]:5432/db") == "postgresql://u:****@[::1]:5432/db"


def test_embedded_broker_is_used_when_no_broker_is_configured(isolated_env: Path) -> None:
    settings = load_settings()
    url_file = settings.state_dir / "embedded" / "broker.url"
    url_file.parent.mkdir(parents=True)
    url_file.write_text("redis://:pw@127.0.0.1:41234/0\n")
    assert load_settings().broker_url == "redis://:pw@127.0.0.1:41234/0"
    assert load_settings().effective_result_backend == "redis://:pw@127.0.0.1:41234/1"


def test_an_explicit_broker_wins_over_the_embedded_one(
    isolated_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = load_settings()
    url_file = settings.state_dir / "embedded" / "broker.url"
    url_file.parent.mkdir(parents=True)
    url_file.write_text("redis://:pw@127.0.0.1:41234/0\n")
    monkeypatch.setenv("APPLIANCE_BROKER_URL", "redis://10.1.1.1:6379/0")
    assert load_settings().broker_url == "redis://10.1.1.1:6379/0"
