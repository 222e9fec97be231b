"""deploy/systemd/: systemd-analyze finds nothing to complain about, and the invariants hold.

The invariants are the promises of docs/install.md (systemd units): drain on stop
(KillMode=mixed, a stop timeout longer than the hard time limit), readiness and a watchdog
(Type=notify, WatchdogSec), no crash loop on a configuration error
(RestartPreventExitStatus=78), and an exposure score of at most 2.5 for worker and beat.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from appliance.core import constants as C
from appliance.core import exitcodes
from appliance.host.supervisor_conf import deploy_dir

SYSTEMD = deploy_dir() / "systemd"
UNITS = sorted(p.name for p in SYSTEMD.iterdir() if p.suffix in (".service", ".target", ".timer"))
LONG_RUNNING = ("appliance-worker@.service", "appliance-beat.service")
MAX_EXPOSURE = 2.5


def analyze() -> str:
    binary = shutil.which("systemd-analyze")
    if not binary:
        reason = "systemd-analyze is missing; fix: apt-get install systemd"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    return binary


def directives(name: str) -> dict[str, list[str]]:
    """KEY -> values of a unit file (all sections; repeated keys keep every value)."""
    found: dict[str, list[str]] = {}
    for line in (SYSTEMD / name).read_text().splitlines():
        if line and not line.startswith(("#", "[")) and "=" in line:
            key, _, value = line.partition("=")
            found.setdefault(key.strip(), []).append(value.strip())
    return found


@pytest.fixture
def rendered(tmp_path: Path) -> Path:
    """The units with ExecStart pointing at stand-in programs that exist (verify checks)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for program in ("appliance", "celery"):
        (bin_dir / program).write_text("#!/bin/sh\n")
        (bin_dir / program).chmod(0o755)
    for name in UNITS:
        text = (SYSTEMD / name).read_text().replace("/opt/appliance/bin/", f"{bin_dir}/")
        (tmp_path / name).write_text(text)
    (tmp_path / "appliance-worker@default.service").write_text(
        (tmp_path / "appliance-worker@.service").read_text()
    )
    return tmp_path


def test_the_public_unit_names_exist() -> None:
    assert set(UNITS) >= {
        "appliance.target",
        "appliance-worker@.service",
        "appliance-beat.service",
        "appliance-healthcheck.service",
        "appliance-healthcheck.timer",
        "appliance-flower.service",
    }
    assert (SYSTEMD / "redis-local.conf").is_file()


def test_systemd_analyze_verify_is_clean(rendered: Path) -> None:
    names = [n for n in UNITS if n != "appliance-worker@.service"]
    names.append("appliance-worker@default.service")
    result = subprocess.run(
        [analyze(), "verify", "--man=no", *names],
        cwd=rendered,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    # Unknown keys and bad values are only warnings (exit 0): any output is a finding.
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), (
        result.stdout + result.stderr
    )


@pytest.mark.parametrize("name", LONG_RUNNING)
def test_exposure_of_worker_and_beat_is_at_most_2_5(name: str) -> None:
    result = subprocess.run(
        [analyze(), "security", "--offline=yes", "--no-pager", name],
        cwd=SYSTEMD,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= MAX_EXPOSURE, result.stdout


@pytest.mark.parametrize("name", LONG_RUNNING)
def test_long_running_units_drain_notify_and_do_not_loop_on_config_errors(name: str) -> None:
    unit = directives(name)
    assert unit["Type"] == ["notify"]
    assert unit["NotifyAccess"] == ["main"]
    assert int(unit["WatchdogSec"][0].removesuffix("s")) >= 10  # beat ticks every 5 s
    assert unit["KillMode"] == ["mixed"]  # SIGTERM to the main process only
    assert unit["KillSignal"] == ["SIGTERM"]
    assert unit["Restart"] in (["on-failure"], ["always"])
    assert unit["RestartPreventExitStatus"] == [str(exitcodes.CONFIG)]
    assert {"RestartSec", "StartLimitIntervalSec", "StartLimitBurst"} <= unit.keys()
    assert unit["EnvironmentFile"] == [C.SYSTEM_ENV_FILE]
    assert unit["User"] == ["appliance"] and unit["Group"] == ["appliance"]
    assert unit["StateDirectory"] == ["appliance"] and unit["LogsDirectory"] == ["appliance"]
    assert "RuntimeDirectory" in unit
    assert {"MemoryHigh", "MemoryMax"} <= unit.keys()
    assert "IPAddressDeny" not in unit  # Redis and PostgreSQL may be remote


def test_worker_stop_timeout_outlasts_the_hard_time_limit() -> None:
    unit = directives("appliance-worker@.service")
    assert unit["TimeoutStopSec"] == [str(C.DEFAULT_TIME_LIMIT + C.STOP_TIMEOUT_MARGIN_SECONDS)]
    assert int(unit["TimeoutStopSec"][0]) > C.DEFAULT_TIME_LIMIT
    assert unit["ExecStart"] == ["/opt/appliance/bin/appliance worker --group %i"]


def test_every_unit_opens_with_how_to_install_and_what_it_assumes() -> None:
    for name in [*UNITS, "redis-local.conf"]:
        head = (SYSTEMD / name).read_text().split("\n[", 1)[0]
        assert head.startswith("# ") and "Install:" in head and "Assumes:" in head, name


def test_health_timer_runs_every_minute() -> None:
    timer = directives("appliance-healthcheck.timer")
    assert timer["OnUnitActiveSec"] == ["1min"]
    service = directives("appliance-healthcheck.service")
    assert service["ExecStart"][0].startswith("/opt/appliance/bin/appliance health")


def test_redis_drop_in_orders_the_local_redis_first() -> None:
    dropin = directives("redis-local.conf")
    assert dropin["After"] == ["redis-server.service"]
    assert dropin["Wants"] == ["redis-server.service"]


def test_flower_listens_on_loopback_only() -> None:
    assert "--address=127.0.0.1" in directives("appliance-flower.service")["ExecStart"][0]


def test_flower_runs_through_the_appliance_and_does_not_loop_without_flower_or_credentials() -> (
    None
):
    unit = directives("appliance-flower.service")
    assert unit["ExecStart"] == [
        "/opt/appliance/bin/appliance flower --address=127.0.0.1 --port=5555"
    ]
    # 72: flower is not installed; 78: no FLOWER_BASIC_AUTH (`appliance flower`).
    assert unit["RestartPreventExitStatus"] == [f"{exitcodes.MISSING_PROGRAM} {exitcodes.CONFIG}"]
    assert unit["EnvironmentFile"] == [C.SYSTEM_ENV_FILE]  # FLOWER_BASIC_AUTH comes from there
    assert unit["User"] == ["appliance"] and unit["WantedBy"] == ["appliance.target"]


def test_flower_unit_says_what_it_shows_and_how_to_get_tasks() -> None:
    head = (SYSTEMD / "appliance-flower.service").read_text().split("\n[", 1)[0]
    flat = " ".join(line.lstrip("# ") for line in head.splitlines())
    assert "--with-flower" in flat and "FLOWER_BASIC_AUTH" in flat
    assert "APPLIANCE_TASK_EVENTS=true" in flat and "celery control enable_events" in flat


def test_no_deploy_file_sets_stopasgroup_true() -> None:
    for path in deploy_dir().rglob("*"):
        if path.is_file():
            assert not re.search(r"^stopasgroup\s*=\s*true", path.read_text(), re.M), path
