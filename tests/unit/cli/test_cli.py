"""The CLI without servers: help, config errors, bad arguments, exit codes."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from appliance.cli import cli


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def test_help_touches_nothing(runner: CliRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    # A broken config must not matter to --help: settings are loaded lazily.
    monkeypatch.setenv("APPLIANCE_BROKER_URL", "nonsense")
    result = runner.invoke(cli, ["--help"])
    assert result.exit_code == 0
    for command in ("worker", "beat", "up", "submit", "tasks", "config", "db"):
        assert command in result.output


def test_config_check_exits_78_with_one_line(
    runner: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("APPLIANCE_BROKER_URL", "nonsense")
    result = runner.invoke(cli, ["config", "check"])
    assert result.exit_code == 78
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "APPLIANCE_BROKER_URL" in lines[0]
    assert "Traceback" not in result.output


def test_every_command_exits_78_on_bad_config(
    runner: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("APPLIANCE_VISIBILITY_TIMEOUT", "1")
    for args in (
        ["config", "show"],
        ["tasks", "list"],
        ["submit", "demo.add"],
        ["db", "upgrade"],
        ["worker"],
        ["beat"],
        ["up"],
    ):
        result = runner.invoke(cli, args)
        assert result.exit_code == 78, (args, result.output)


def test_config_check_refuses_a_task_module_that_does_not_import(
    runner: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("APPLIANCE_TASK_MODULES", "no_such_module_xyz")
    result = runner.invoke(cli, ["config", "check"])
    assert result.exit_code == 78
    assert "no_such_module_xyz" in result.output


def test_config_show_masks_secrets(runner: CliRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APPLIANCE_BROKER_URL", "redis://:topsecret@127.0.0.1:6379/0")
    for args in (["config", "show"], ["config", "show", "--json"]):
        result = runner.invoke(cli, args)
        assert result.exit_code == 0
        assert "topsecret" not in result.output
        assert "APPLIANCE_BROKER_URL" in result.output or "broker_url" in result.output
    data = json.loads(runner.invoke(cli, ["config", "show", "--json"]).output)
    assert data["broker_url"] == "redis://:****@127.0.0.1:6379/0"


@pytest.mark.parametrize(
    "args",
    [
        ["submit", "demo.add", "--args", "[1,"],
        ["submit", "demo.add", "--args", '{"x": 1}'],
        ["submit", "demo.add", "--kwargs", "[1]"],
        ["submit", "demo.add", "--countdown", "-1"],
        ["submit", "demo.add", "--eta", "tomorrow"],
        ["submit", "demo.add", "--priority", "12"],
        ["tasks", "list", "--since", "yesterday"],
        ["tasks", "list", "--status", "DONE"],
        ["worker", "-c", "0"],
    ],
)
def test_bad_arguments_exit_2_without_traceback(runner: CliRunner, args: list[str]) -> None:
    result = runner.invoke(cli, args)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output


def test_up_without_redis_server_says_how_to_install_it(
    runner: CliRunner, monkeypatch: pytest.MonkeyPatch, tmp_path: pytest.TempPathFactory
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no redis-server anywhere
    result = runner.invoke(cli, ["up"])
    assert result.exit_code == 72
    assert "apt-get install redis-server" in result.output
    assert len(result.output.strip().splitlines()) == 1
