"""`appliance flower` and `appliance up --flower`: basic auth or no Flower, the credentials
never on a command line, a clear exit 72 when Flower is not installed."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from appliance.cli import cli
from appliance.config.settings import load_settings
from appliance.core import constants as C
from appliance.errors import ConfigError, MissingProgramError
from appliance.host import embedded, flower


@pytest.fixture(autouse=True)
def _no_flower_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("FLOWER_"):
            monkeypatch.delenv(key)


@pytest.fixture
def not_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    real = flower.importlib.util.find_spec
    monkeypatch.setattr(
        flower.importlib.util, "find_spec", lambda name: None if name == "flower" else real(name)
    )


def test_credentials_are_required_and_must_be_user_colon_password() -> None:
    with pytest.raises(ConfigError, match="FLOWER_BASIC_AUTH is not set") as missing:
        flower.check_credentials({})
    assert missing.value.exit_code == 78 and "fix:" in str(missing.value)
    for bad in ("nocolon", ":pw", "user:", "a:b,broken"):
        with pytest.raises(ConfigError, match="USER:PASSWORD"):
            flower.check_credentials({"FLOWER_BASIC_AUTH": bad})
    flower.check_credentials({"FLOWER_BASIC_AUTH": "appliance:s3cret"})
    flower.check_credentials({"FLOWER_BASIC_AUTH": "a:1,b:pass:with:colons"})
    flower.check_credentials({"FLOWER_AUTH": ".*@example\\.org"})  # OAuth instead


def test_flower_variables_come_from_the_env_file_and_the_environment_wins(
    isolated_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    isolated_env.write_text(
        "APPLIANCE_TASK_EVENTS=true\nFLOWER_BASIC_AUTH=appliance:fromfile\nFLOWER_PERSISTENT=1\n"
    )
    assert flower.flower_values() == {
        "FLOWER_BASIC_AUTH": "appliance:fromfile",
        "FLOWER_PERSISTENT": "1",
    }
    monkeypatch.setenv("FLOWER_BASIC_AUTH", "appliance:fromenv")
    assert flower.flower_values()["FLOWER_BASIC_AUTH"] == "appliance:fromenv"


def test_flower_argv_listens_on_loopback_and_leaves_task_events_to_the_setting() -> None:
    argv = flower.flower_argv()
    assert argv == ["flower", "--address=127.0.0.1", "--port=5555", "--enable_events=False"]
    assert flower.flower_argv("0.0.0.0", 8080)[1:3] == ["--address=0.0.0.0", "--port=8080"]


def test_run_flower_hands_the_credentials_over_in_the_environment_only(
    isolated_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    isolated_env.write_text("FLOWER_BASIC_AUTH=appliance:s3cret\n")
    seen: dict[str, Any] = {}

    def start_celery(app: Any, argv: list[str]) -> int:
        seen.update(argv=argv, auth=os.environ.get("FLOWER_BASIC_AUTH"), app=app)
        return 0

    from appliance import celery_app
    from appliance.worker import launch

    monkeypatch.setattr(launch, "start_celery", start_celery)
    monkeypatch.setattr(celery_app, "load_tasks", lambda: "the app")
    monkeypatch.setattr(os, "environ", dict(os.environ))  # run_flower exports into it
    assert flower.run_flower() == 0
    assert seen["app"] == "the app" and seen["auth"] == "appliance:s3cret"
    assert not any("s3cret" in arg for arg in seen["argv"])


def test_appliance_flower_without_flower_exits_72_with_one_line(not_installed: None) -> None:
    result = CliRunner().invoke(cli, ["flower"])
    assert result.exit_code == 72
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("appliance: error: flower is not installed")
    assert "--with-flower" in lines[0]


def test_appliance_flower_without_credentials_exits_78() -> None:
    result = CliRunner().invoke(cli, ["flower"])
    assert result.exit_code == 78
    assert "FLOWER_BASIC_AUTH" in result.output


def test_up_with_flower_but_without_it_exits_72_before_starting_anything(
    not_installed: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(embedded.shutil, "which", lambda name: f"/usr/bin/{name}")
    settings = load_settings()
    with pytest.raises(MissingProgramError, match="flower is not installed"):
        embedded.run_up(settings, flower_port=5555)
    assert not (settings.state_dir / C.EMBEDDED_DIR).exists()
    result = CliRunner().invoke(cli, ["up", "--flower"])
    assert result.exit_code == 72, result.output


def test_up_generates_credentials_readable_by_its_user_only(tmp_path: Path) -> None:
    env, where = embedded._flower_credentials(tmp_path)
    path = tmp_path / C.EMBEDDED_FLOWER_CREDENTIALS_FILE
    user, _, password = path.read_text().strip().partition(":")
    assert env == {"FLOWER_BASIC_AUTH": f"{user}:{password}"}
    assert user == "appliance" and len(password) >= 24
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert str(path) in where and password not in where


def test_up_takes_configured_credentials_as_they_are(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLOWER_BASIC_AUTH", "ops:chosen")
    env, where = embedded._flower_credentials(tmp_path)
    assert env["FLOWER_BASIC_AUTH"] == "ops:chosen"
    assert "chosen" not in where
    assert not (tmp_path / C.EMBEDDED_FLOWER_CREDENTIALS_FILE).exists()
