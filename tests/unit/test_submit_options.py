"""Submit options checked before anything is published (no Redis needed to refuse)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from celery import chain, chord, group
from click.testing import CliRunner

from appliance import api
from appliance.celery_app import app
from appliance.cli import cli
from appliance.errors import SubmitOptionError
from appliance.tasks import demo


@pytest.mark.parametrize(
    ("options", "says"),
    [
        ({"countdown": 3240}, "countdown 3240s plus the hard time limit 360s"),
        ({"eta": datetime.now(UTC) + timedelta(hours=2)}, "ETA "),
        ({"eta": datetime.now().replace(tzinfo=None) + timedelta(days=1)}, "ETA "),  # naive: UTC
        ({"countdown": 600, "time_limit": 3100}, "countdown 600s plus the hard time limit 3100s"),
        ({"time_limit": 3600, "soft_time_limit": 10}, "time limit 3600s is not below"),
        ({"time_limit": 2}, "soft time limit 300s (APPLIANCE_TASK_SOFT_TIME_LIMIT) is above"),
        ({"time_limit": 2, "soft_time_limit": 5}, "soft time limit 5s is above"),
    ],
)
def test_options_redis_cannot_honour_are_refused_with_one_line(
    options: dict[str, object], says: str
) -> None:
    with pytest.raises(SubmitOptionError) as raised:
        api.submit("demo.add", args=[1, 2], **options)  # type: ignore[arg-type]
    message = str(raised.value)
    assert says in message and "fix:" in message and "\n" not in message
    assert raised.value.exit_code == 2


def test_a_raised_visibility_timeout_allows_a_longer_delay(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from appliance.config.settings import get_settings

    monkeypatch.setenv("APPLIANCE_VISIBILITY_TIMEOUT", "14400")
    get_settings.cache_clear()
    published: list[dict[str, object]] = []
    monkeypatch.setattr(app, "send_task", lambda name, **kw: published.append(kw))
    api.submit("demo.add", args=[1, 2], countdown=7200, soft_time_limit=1, time_limit=2)
    (sent,) = published
    assert (sent["countdown"], sent["soft_time_limit"], sent["time_limit"]) == (7200, 1, 2)


def test_cli_exits_2_naming_the_visibility_timeout() -> None:
    result = CliRunner().invoke(cli, ["submit", "demo.add", "--countdown", "4000"])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "APPLIANCE_VISIBILITY_TIMEOUT" in lines[0]
    assert "Traceback" not in result.output


def test_every_task_name_of_a_workflow_is_found() -> None:
    workflow = chain(
        demo.add.s(1, 2),
        group(demo.add.s(1), app.signature("other.task")),
        demo.total.s(),
    ).on_error(demo.on_error.s())
    assert set(api._task_names(workflow)) == {
        "demo.add",
        "other.task",
        "demo.sum",
        "demo.on_error",
    }
    assert set(api._task_names(chord([demo.add.s(1, 2)], demo.total.s()))) == {
        "demo.add",
        "demo.sum",
    }
