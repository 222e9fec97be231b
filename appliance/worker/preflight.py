"""Before a worker starts: refuse a broker that would lose or refuse its work (exit 78).

A Redis that cannot be reached is not judged here: the worker waits for it.
"""

from __future__ import annotations

import logging

from appliance.config.settings import Settings
from appliance.errors import ConfigError

logger = logging.getLogger("appliance.runtime")


def refuse_evicting_broker(settings: Settings) -> None:
    """Exit 78 on a broker whose maxmemory-policy can evict queued tasks.

    A Redis that cannot be reached is not judged here: the worker waits for it.
    """
    from urllib.parse import urlsplit

    if urlsplit(settings.broker_url).scheme not in ("redis", "rediss", "sentinel"):
        return
    import redis

    from appliance.broker.admin import client
    from appliance.core.text import mask_url

    try:
        policy = str(client(settings).info("memory").get("maxmemory_policy", "noeviction"))
    except redis.RedisError as exc:
        from appliance.broker.acl import acl_user, grant, is_noperm

        if is_noperm(exc):
            # INFO is in @dangerous: an ACL user with -@dangerous may not run it.
            logger.warning(
                "broker eviction policy not checked: Redis refused INFO to ACL user %s; "
                "fix: %s (or make sure maxmemory-policy is noeviction)",
                acl_user(settings.broker_url),
                grant(settings.broker_url, "+info"),
            )
        else:
            logger.warning("broker eviction policy not checked (%s)", exc)
        return
    if policy != "noeviction":
        raise ConfigError(
            f"the broker {mask_url(settings.broker_url)} has maxmemory-policy {policy}, which "
            "evicts queued tasks; fix: appliance redis tune --apply (or CONFIG SET "
            "maxmemory-policy noeviction)"
        )


def refuse_missing_channels(settings: Settings) -> None:
    """Exit 78 when the broker's ACL user may not use the Pub/Sub channels Celery needs.

    Remote control (revoke, inspect) listens on the pidbox fanout channel and results
    are announced on celery-task-meta-* channels; without them the worker dies inside
    Celery with a traceback ("Unrecoverable error: NoPermissionError"). A Redis that
    cannot be reached is not judged here: the worker waits for it.
    """
    from urllib.parse import urlsplit

    parts = urlsplit(settings.broker_url)
    if parts.scheme not in ("redis", "rediss"):
        return
    import redis

    from appliance.broker.acl import acl_user, grant, is_noperm
    from appliance.broker.admin import client
    from appliance.core import constants as C

    db = int((parts.path or "/0").strip("/") or 0)
    # kombu's fanout channel for the "celery.pidbox" exchange, which workers PSUBSCRIBE.
    pidbox = f"/{db}.celery.pidbox"
    conn = client(settings)
    pubsub = conn.pubsub()
    try:
        pubsub.psubscribe(pidbox)
        pubsub.get_message(timeout=C.REDIS_SOCKET_TIMEOUT)
        # Publishing to a channel nobody listens on: what storing a result does.
        conn.publish("celery-task-meta-appliance-acl-probe", "")
    except redis.RedisError as exc:
        if is_noperm(exc):
            raise ConfigError(
                f"the Redis ACL user {acl_user(settings.broker_url)} may not use the Pub/Sub "
                "channels Celery needs (remote control, result notifications); "
                f"fix: {grant(settings.broker_url, '&*')}"
            ) from None
        logger.debug("broker channels not checked (%s)", exc)
    finally:
        pubsub.close()
        conn.close()
