"""The Lua scripts: each file loads, and an include stands for its library's text."""

from __future__ import annotations

from importlib import resources

import pytest

from appliance.broker import scripts

NAMES = sorted(
    entry.name.removesuffix(".lua")
    for entry in resources.files("appliance.broker").joinpath("lua").iterdir()
    if entry.name.endswith(".lua")
)


@pytest.mark.parametrize("name", NAMES)
def test_every_script_loads_with_its_includes_expanded(name: str) -> None:
    text = scripts.source(name)
    assert "redis.call" in text
    assert "-- include:" not in text


def test_the_result_store_and_ack_and_fetch_share_one_store_rule() -> None:
    rule = scripts.source("store_unless_success")
    assert rule in scripts.source("store_result")
    assert rule in scripts.source("ack_and_fetch")
