"""`appliance deploy supervisor-conf`: the rendered programs install.sh writes to conf.d/."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from appliance.cli import cli


def test_supervisor_conf_prints_one_worker_per_group_with_the_given_paths(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("APPLIANCE_QUEUES", "default,urgent")
    monkeypatch.setenv("APPLIANCE_WORKER_GROUPS", "default=default;urgent=urgent")
    monkeypatch.setenv("APPLIANCE_TASK_TIME_LIMIT", "600")
    monkeypatch.setenv("APPLIANCE_VISIBILITY_TIMEOUT", "7200")
    result = CliRunner().invoke(
        cli,
        ["deploy", "supervisor-conf", "--bin", "/srv/a/bin/appliance", "--user", "svc",
         "--log-dir", "/srv/log"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    out = result.output
    assert "[program:appliance-worker-urgent]" in out
    assert "command=/srv/a/bin/appliance worker --group urgent" in out
    assert "user=svc" in out and "stdout_logfile=/srv/log/worker-urgent.log" in out
    assert "stopwaitsecs=630" in out  # hard limit 600 + 30
    assert "stopasgroup=false" in out


def test_defaults_are_the_installed_paths() -> None:
    result = CliRunner().invoke(cli, ["deploy", "supervisor-conf"])
    assert result.exit_code == 0, result.output
    assert "command=/opt/appliance/bin/appliance worker --group default" in result.output
    assert "user=appliance" in result.output
    assert "/var/log/appliance/beat.log" in result.output


def test_flower_program_on_request() -> None:
    assert "appliance-flower" not in CliRunner().invoke(cli, ["deploy", "supervisor-conf"]).output
    result = CliRunner().invoke(cli, ["deploy", "supervisor-conf", "--flower"])
    assert result.exit_code == 0, result.output
    assert "command=/opt/appliance/bin/appliance flower --address=127.0.0.1 --port=5555" in (
        result.output
    )
    assert "programs=appliance-worker-default,appliance-beat,appliance-flower" in result.output
