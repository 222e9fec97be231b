"""Fixtures shared by every tier: each test runs with a clean, private environment."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.config.settings import get_settings


@pytest.fixture(autouse=True)
def isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    """No APPLIANCE_*/CELERY_* setting of the host leaks in; an empty env file; a temp state dir."""
    for key in list(os.environ):
        if key.startswith(("APPLIANCE_", "CELERY_")) and not key.startswith("APPLIANCE_TEST_"):
            monkeypatch.delenv(key)
    env_file = tmp_path / "appliance.env"
    env_file.write_text("")
    monkeypatch.setenv("APPLIANCE_ENV_FILE", str(env_file))
    monkeypatch.setenv("APPLIANCE_STATE_DIR", str(tmp_path / "state"))
    get_settings.cache_clear()
    yield env_file
    get_settings.cache_clear()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print the figures fault-injection tests attach (recovery seconds, duplicates) as a table."""
    rows = []
    for report in terminalreporter.getreports("passed") + terminalreporter.getreports("failed"):
        if report.when == "call" and report.user_properties and "/faults/" in report.nodeid:
            figures = ", ".join(f"{k}={v}" for k, v in report.user_properties)
            rows.append(f"{report.outcome.upper():<7} {report.nodeid.split('::')[-1]}: {figures}")
    if rows:
        terminalreporter.write_sep("-", "fault-injection figures (lost = 0 is asserted)")
        for row in rows:
            terminalreporter.write_line(row)
