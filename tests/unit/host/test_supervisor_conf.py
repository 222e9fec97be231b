"""deploy/supervisor/appliance.conf renders into a config supervisord accepts."""

from __future__ import annotations

import configparser
from pathlib import Path

import pytest

from appliance.config.settings import load_settings
from appliance.host.supervisor_conf import deploy_dir, render


def _parse(text: str) -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(inline_comment_prefixes=(" ;",))
    parser.read_string(text)
    return parser


def test_one_worker_program_per_group(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APPLIANCE_QUEUES", "default,urgent")
    monkeypatch.setenv("APPLIANCE_WORKER_GROUPS", "default=default;urgent=urgent")
    conf = _parse(
        render(
            load_settings(),
            bin_command="/opt/appliance/bin/appliance",
            user="appliance",
            log_dir=Path("/var/log/appliance"),
        )
    )
    assert conf.get("program:appliance-worker-urgent", "command").strip() == (
        "/opt/appliance/bin/appliance worker --group urgent"
    )
    assert conf.get("group:appliance", "programs").strip() == (
        "appliance-worker-default,appliance-worker-urgent,appliance-beat"
    )


def test_stop_settings_never_kill_running_tasks() -> None:
    settings = load_settings()
    conf = _parse(render(settings, bin_command="x", user="u", log_dir=Path("/l")))
    for section in ("program:appliance-worker-default", "program:appliance-beat"):
        assert conf.get(section, "stopasgroup").strip() == "false"
        assert conf.get(section, "killasgroup").strip() == "true"
        assert conf.get(section, "stopsignal").strip() == "TERM"
    stopwait = int(conf.get("program:appliance-worker-default", "stopwaitsecs"))
    assert stopwait > settings.task_time_limit


def test_every_non_default_directive_is_commented() -> None:
    text = (deploy_dir() / "supervisor" / "appliance.conf").read_text()
    directives = [
        line for line in text.splitlines() if line and line[0] not in ";[" and "=" in line
    ]
    assert directives
    assert all(" ;" in line for line in directives), [d for d in directives if " ;" not in d]
