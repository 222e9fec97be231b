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


def test_flower_is_rendered_only_when_asked_for() -> None:
    settings = load_settings()
    plain = _parse(render(settings, bin_command="/a/bin/appliance", user="u", log_dir=Path("/l")))
    assert "program:appliance-flower" not in plain.sections()
    assert "appliance-flower" not in plain.get("group:appliance", "programs")
    conf = _parse(
        render(
            settings, bin_command="/a/bin/appliance", user="u", log_dir=Path("/l"), flower_port=5600
        )
    )
    assert conf.get("program:appliance-flower", "command").strip() == (
        "/a/bin/appliance flower --address=127.0.0.1 --port=5600"
    )
    assert conf.get("group:appliance", "programs").strip().endswith(",appliance-flower")
    # Neither flower missing (72) nor a missing credential (78) is restarted.
    assert conf.get("program:appliance-flower", "exitcodes").strip() == "0,72,78"
    assert conf.get("program:appliance-flower", "stdout_logfile").strip() == "/l/flower.log"
    text = render(settings, bin_command="x", user="u", log_dir=Path("/l"), flower_port=5555)
    assert "FLOWER_BASIC_AUTH=" not in text and "environment=" not in text  # no secret here
