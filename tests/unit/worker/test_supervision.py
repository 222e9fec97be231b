"""The supervision step's shutdown: a stopping worker removes its heartbeat, a retiring
consumer (recycling) leaves it to its successor."""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace

import pytest
from celery.worker import state as worker_state

from appliance.worker import heartbeat
from appliance.worker.recycling import EX_RECYCLE
from appliance.worker.supervision import SupervisionStep
from tests.helpers.fake_redis import FakeRedis

NODE = "appliance-default@host"


@pytest.fixture
def step() -> Iterator[tuple[SupervisionStep, FakeRedis]]:
    fake = FakeRedis()
    step = SupervisionStep(SimpleNamespace(hostname=NODE))
    step._client = fake  # type: ignore[assignment]
    fake.set(heartbeat.worker_key(NODE), "{}")
    before = worker_state.should_stop
    yield step, fake
    worker_state.should_stop = before


def test_a_stopping_worker_removes_its_heartbeat(step: tuple[SupervisionStep, FakeRedis]) -> None:
    supervision, fake = step
    worker_state.should_stop = 0

    supervision.shutdown(SimpleNamespace(hostname=NODE))

    assert fake.get(heartbeat.worker_key(NODE)) is None


def test_a_retiring_consumer_leaves_the_units_heartbeat_to_its_successor(
    step: tuple[SupervisionStep, FakeRedis],
) -> None:
    supervision, fake = step
    worker_state.should_stop = EX_RECYCLE

    supervision.shutdown(SimpleNamespace(hostname=NODE))

    assert fake.get(heartbeat.worker_key(NODE)) == b"{}"
