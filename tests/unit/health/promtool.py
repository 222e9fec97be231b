"""`promtool check metrics` for the health metrics tests (unit and integration)."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest


def check_metrics(text: str) -> None:
    """Assert that promtool finds nothing to complain about in *text*. Without promtool the
    test fails when CI is set (scripts/dev.sh test installs it) and is skipped elsewhere."""
    binary = shutil.which("promtool")
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("promtool is missing; fix: apt-get install prometheus (dev.sh test does)")
        pytest.skip("promtool is not installed (Debian package prometheus)")
    result = subprocess.run(
        [binary, "check", "metrics"],
        input=text,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert (result.returncode, result.stdout + result.stderr) == (0, ""), text
