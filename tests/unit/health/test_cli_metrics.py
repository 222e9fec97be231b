"""`appliance health --textfile/--format prometheus` when health cannot measure.

Given a textfile from an earlier run, when the checker fails (exit 3) or Redis cannot
be read (exit 2), then the textfile is rewritten, never left saying OK: status 3 for
every check it named and `appliance_up 0`; the exit codes stay Nagios.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families

from appliance.cli import cli
from tests.unit.health.conftest import Promtool

EARLIER = """\
# HELP appliance_up up
# TYPE appliance_up gauge
appliance_up 1.0
# HELP appliance_health_status Overall
# TYPE appliance_health_status gauge
appliance_health_status 0.0
# HELP appliance_check_status Status
# TYPE appliance_check_status gauge
appliance_check_status{check="redis_latency"} 0.0
appliance_check_status{check="queue_default_depth"} 0.0
appliance_check_status{check="workers_default"} 0.0
# HELP appliance_queue_depth depth
# TYPE appliance_queue_depth gauge
appliance_queue_depth{queue="default"} 5.0
"""


def families(text: str) -> dict[str, dict[tuple[str, ...], float]]:
    return {
        f.name: {tuple(s.labels.values()): s.value for s in f.samples}
        for f in text_string_to_metric_families(text)
    }


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def textfile(tmp_path: Path) -> Path:
    path = tmp_path / "appliance.prom"
    path.write_text(EARLIER)
    return path


def test_bad_settings_rewrite_the_textfile_as_unknown(
    textfile: Path, monkeypatch: pytest.MonkeyPatch, promtool: Promtool
) -> None:
    monkeypatch.setenv("APPLIANCE_VISIBILITY_TIMEOUT", "soon")
    result = CliRunner().invoke(cli, ["health", "--textfile", str(textfile)])
    assert result.exit_code == 3
    assert result.stdout.startswith("APPLIANCE UNKNOWN - ")
    found = families(textfile.read_text())
    assert found["appliance_up"] == {(): 0}
    assert found["appliance_health_status"] == {(): 3}
    assert found["appliance_check_status"] == {
        ("health",): 3,
        ("redis_latency",): 3,
        ("queue_default_depth",): 3,
        ("workers_default",): 3,
    }
    assert "appliance_queue_depth" not in found  # no stale value
    promtool(textfile.read_text())
    assert list(textfile.parent.glob("appliance.prom.*")) == []  # no temporary file left


def test_a_second_unknown_keeps_saying_unknown(
    textfile: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("APPLIANCE_VISIBILITY_TIMEOUT", "soon")
    for _ in range(2):
        assert CliRunner().invoke(cli, ["health", "--textfile", str(textfile)]).exit_code == 3
    assert families(textfile.read_text())["appliance_check_status"][("workers_default",)] == 3


def test_prometheus_format_on_unknown_is_metrics_on_stdout_and_the_line_on_stderr(
    monkeypatch: pytest.MonkeyPatch, promtool: Promtool
) -> None:
    monkeypatch.setenv("APPLIANCE_VISIBILITY_TIMEOUT", "soon")
    result = CliRunner().invoke(cli, ["health", "--format", "prometheus"])
    assert result.exit_code == 3
    assert result.stderr.startswith("APPLIANCE UNKNOWN - ") and "VISIBILITY" in result.stderr
    found = families(result.stdout)
    assert found["appliance_up"] == {(): 0}
    assert found["appliance_check_status"] == {("health",): 3}
    promtool(result.stdout)


def test_redis_unreachable_is_critical_and_marks_the_rest_unknown(
    textfile: Path, monkeypatch: pytest.MonkeyPatch, promtool: Promtool
) -> None:
    monkeypatch.setenv("APPLIANCE_BROKER_URL", f"redis://127.0.0.1:{closed_port()}/0")
    result = CliRunner().invoke(cli, ["health", "--textfile", str(textfile)])
    assert result.exit_code == 2
    assert result.stdout.startswith("APPLIANCE CRITICAL - Redis unreachable")
    found = families(textfile.read_text())
    assert found["appliance_up"] == {(): 0}
    assert found["appliance_health_status"] == {(): 2}
    assert found["appliance_check_status"] == {
        ("redis",): 2,
        ("redis_latency",): 3,
        ("queue_default_depth",): 3,
        ("workers_default",): 3,
    }
    assert "appliance_queue_depth" not in found
    promtool(textfile.read_text())


def test_an_unwritable_textfile_is_unknown_and_says_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("APPLIANCE_BROKER_URL", f"redis://127.0.0.1:{closed_port()}/0")
    missing = tmp_path / "no" / "such" / "dir" / "appliance.prom"
    result = CliRunner().invoke(cli, ["health", "--textfile", str(missing)])
    assert result.exit_code == 3
    assert result.stdout.startswith("APPLIANCE UNKNOWN - ")
    assert "textfile was not written" in result.stdout
    assert "Traceback" not in result.output
