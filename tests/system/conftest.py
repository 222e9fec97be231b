"""System fixtures: a wheelhouse of this package, a booted systemd machine, real supervisord.

The slow tests carry the `system` marker. They skip locally when the host lacks what they
need (root, debootstrap, systemd-nspawn) and fail instead when CI is set: .ci/run installs
all of it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.system.machine import Machine, booted_machine, build_wheelhouse, missing_requirements


def unavailable(reason: str) -> None:
    """Skip locally; fail under CI, which installs everything these tests need."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI must provide it)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Wheels of this checkout and all its dependencies (pip wheel, once per session)."""
    return build_wheelhouse(tmp_path_factory.mktemp("wheelhouse"))


@pytest.fixture(scope="module")
def machine(tmp_path_factory: pytest.TempPathFactory, wheelhouse: Path) -> Iterator[Machine]:
    """A freshly booted Debian bookworm with systemd as PID 1, stopped after the module."""
    reason = missing_requirements()
    if reason:
        unavailable(reason)
    with booted_machine(tmp_path_factory.mktemp("machine"), wheelhouse) as booted:
        yield booted
