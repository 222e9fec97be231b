"""Admin access to the broker's Redis for CLI commands (redis-py; the health path uses resp)."""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote, urlsplit

import redis

from appliance.broker import reach
from appliance.config.settings import Settings
from appliance.core.text import first_line
from appliance.errors import BrokerUnavailableError


def client(settings: Settings) -> redis.Redis:
    """A redis-py client for the broker database, with short timeouts."""
    return connect(
        settings.broker_url,
        settings.redis_sentinel_master,
        socket_timeout=5,
        socket_connect_timeout=3,
    )


def connect(url: str, master_name: str | None = None, **kwargs: Any) -> redis.Redis:
    """A redis-py client for *url*; for ``sentinel://`` URLs, one that follows the master.

    A Sentinel URL is kombu's and Celery's form: ``sentinel://[:PW@]HOST:PORT[/DB]``
    items joined by ``;``, the database and password taken from the first item (they are
    the master's; the sentinels themselves are asked without them). The client asks the
    sentinels for *master_name*'s address on every new connection, so after a failover
    it reconnects to the promoted replica by itself.
    """
    reach.reaching()
    if urlsplit(url).scheme != "sentinel":
        return redis.Redis.from_url(url, **kwargs)
    if not master_name:
        raise ValueError(
            "a sentinel:// URL needs the master's name; fix: set APPLIANCE_REDIS_SENTINEL_MASTER"
        )
    from redis.sentinel import Sentinel

    hosts, first = sentinel_hosts(url)
    db = int((first.path or "/0").strip("/") or 0)
    username = unquote(first.username) if first.username else None
    password = unquote(first.password) if first.password else None
    sockets = {k: v for k, v in kwargs.items() if k.startswith("socket_")}
    sentinel = Sentinel(hosts, sentinel_kwargs=sockets, **kwargs)
    master: redis.Redis = sentinel.master_for(
        master_name, db=db, username=username, password=password
    )
    return master


def on_kombu_pool(app: Any) -> tuple[Any, redis.Redis]:
    """A kombu connection of *app* and a redis-py client on the pool kombu builds for it.

    kombu builds that pool from the broker URL and transport options, so sentinel://,
    rediss:// and the socket timeouts apply exactly as for the broker. Release the
    connection when done with the client.
    """
    reach.reaching()
    connection = app.connection_for_write()
    try:
        pool = connection.channel().pool
    except BaseException:
        connection.release()
        raise
    return connection, redis.Redis(connection_pool=pool)


def sentinel_hosts(url: str) -> tuple[list[tuple[str, int]], Any]:
    """The (host, port) of each sentinel in a ``;``-joined URL, and the first item parsed."""
    items = [urlsplit(item.strip()) for item in url.split(";") if item.strip()]
    hosts = [(item.hostname or "127.0.0.1", item.port or 26379) for item in items]
    return hosts, items[0]


def unavailable(settings: Settings, exc: Exception) -> BrokerUnavailableError:
    """Exit 69 with one line: Redis down, or refusing the login (a wrong password), and
    the fix, pointing where the broker URL came from."""
    reason = first_line(exc)
    if reach.is_auth_error(exc) and not reach.is_auth_error(reason):
        reason = f"{type(exc).__name__}: {reason}"
    url = settings.broker_url
    return BrokerUnavailableError(reach.problem(url, reason, reach.origin_of(url)))
