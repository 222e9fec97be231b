"""Sentinel URLs: settings, masking, the Celery profile and the health config agree."""

from __future__ import annotations

import pytest

from appliance.config.profile import celery_config
from appliance.config.settings import load_settings
from appliance.core.text import mask_url
from appliance.errors import ConfigError
from appliance.health.config import load_health_config
from appliance.health.resp import RespConnectionError, master_url
from tests.helpers.processes import free_port

URL = "sentinel://:s3cret@10.0.0.1:26379/0;sentinel://:s3cret@10.0.0.2:26379/0"


def test_a_sentinel_broker_needs_the_master_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APPLIANCE_BROKER_URL", URL)
    with pytest.raises(ConfigError) as raised:
        load_settings()
    assert "APPLIANCE_REDIS_SENTINEL_MASTER" in str(raised.value) and "s3cret" not in str(
        raised.value
    )


def test_sentinel_urls_reach_kombu_and_celery_with_the_master_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("APPLIANCE_BROKER_URL", URL)
    monkeypatch.setenv("APPLIANCE_REDIS_SENTINEL_MASTER", "appliance")
    settings = load_settings()
    # Results default to database 1 on every sentinel item, as for redis:// URLs.
    assert settings.effective_result_backend == URL.replace("/0", "/1")
    config = celery_config(settings)
    assert config["broker_transport_options"]["master_name"] == "appliance"
    assert config["result_backend_transport_options"]["master_name"] == "appliance"
    assert "s3cret" not in str(settings.public_dict())


def test_a_plain_redis_broker_gets_no_sentinel_options(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APPLIANCE_REDIS_SENTINEL_MASTER", "appliance")
    config = celery_config(load_settings())
    assert "master_name" not in config["broker_transport_options"]


def test_every_sentinel_item_is_masked() -> None:
    for masked in (mask_url(URL),):
        assert "s3cret" not in masked and masked.count("****") == 2


def test_health_reads_sentinel_urls_and_needs_the_master_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("APPLIANCE_BROKER_URL", URL)
    with pytest.raises(ConfigError, match="APPLIANCE_REDIS_SENTINEL_MASTER"):
        load_health_config()
    monkeypatch.setenv("APPLIANCE_REDIS_SENTINEL_MASTER", "appliance")
    assert load_health_config().sentinel_master == "appliance"


def test_no_sentinel_answering_is_a_connection_error_naming_each() -> None:
    dead = f"sentinel://127.0.0.1:{free_port()};sentinel://127.0.0.1:{free_port()}"
    with pytest.raises(RespConnectionError, match="no sentinel answered") as raised:
        master_url(dead, "appliance", timeout=0.5)
    assert str(raised.value).count("127.0.0.1:") == 2
