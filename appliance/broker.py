"""Admin access to the broker's Redis for CLI commands (redis-py; the health path uses resp)."""

from __future__ import annotations

import json
from typing import Any

import redis

from appliance.errors import BrokerUnavailableError
from appliance.settings import Settings, mask_url


def client(settings: Settings) -> redis.Redis:
    """A redis-py client for the broker database, with short timeouts."""
    return redis.Redis.from_url(settings.broker_url, socket_timeout=5, socket_connect_timeout=3)


def unavailable(settings: Settings, exc: Exception) -> BrokerUnavailableError:
    return BrokerUnavailableError(
        f"Redis at {mask_url(settings.broker_url)} is unreachable ({exc}); "
        "fix: start redis-server or correct APPLIANCE_BROKER_URL"
    )


def message_task_id(raw: bytes) -> str | None:
    """The task id in a kombu message as stored in a Redis list, if it parses."""
    try:
        message: dict[str, Any] = json.loads(raw)
        return str(message["headers"]["id"])
    except (ValueError, KeyError, TypeError):
        return None
