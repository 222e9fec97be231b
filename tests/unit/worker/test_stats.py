"""A worker node's failure and retry counters, as its heartbeats report them."""

from __future__ import annotations

from typing import Any

import pytest
from billiard.einfo import ExceptionInfo, ExceptionWithTraceback
from celery.exceptions import Retry
from celery.worker.request import Request

from appliance.worker import stats


def _outcome(exc: BaseException, wrapped: bool, monkeypatch: pytest.MonkeyPatch) -> stats.Counters:
    counters = stats.Counters()
    monkeypatch.setattr(stats, "counters", counters)
    monkeypatch.setattr(Request, "on_failure", lambda self, *a, **k: None)
    try:
        raise exc
    except BaseException:
        info: Any = ExceptionInfo()
    if wrapped:  # how a prefork child sends an exception back to the main process
        info.exception = ExceptionWithTraceback(exc, "tb")
    stats.CountingRequest.on_failure(object.__new__(stats.CountingRequest), info)
    return counters


@pytest.mark.parametrize("wrapped", [False, True], ids=["inline", "from a pool child"])
def test_a_retry_counts_as_retried_and_an_error_as_failed(
    wrapped: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    retry = Retry("again", exc=ValueError("flaky"))
    counted = _outcome(retry, wrapped, monkeypatch)
    assert (counted.retried, counted.failed) == (1, 0)
    counted = _outcome(ValueError("bad"), wrapped, monkeypatch)
    assert (counted.retried, counted.failed) == (0, 1)
    assert counted.last_error == "ValueError: bad"
