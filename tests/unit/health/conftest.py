"""Fixtures of the health metrics tests."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.unit.health.promtool import check_metrics

Promtool = Callable[[str], None]


@pytest.fixture
def promtool() -> Promtool:
    """`promtool check metrics` on a text, asserting zero complaints (see check_metrics)."""
    check_metrics("")  # fails or skips now, before the test does any work
    return check_metrics
