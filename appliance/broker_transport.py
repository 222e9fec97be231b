"""kombu's Redis transport, minus the crash on a garbage queue item.

Stock kombu JSON-decodes each item it pops from a queue list inside the transport; a
non-JSON (or non-message) item raises there and the worker exits with "Unrecoverable
error". These subclasses move such an item to the dead-letter store and carry on.
They also keep one Redis client object per channel for the synchronous commands (kombu
builds a new one for every delivered message and every ack).
`install()` points kombu's redis/rediss/sentinel aliases at them, so URL parsing,
TLS and Sentinel stay exactly kombu's. _brpop_read and _get follow kombu 5.7.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from queue import Empty
from typing import Any

from kombu.transport import TRANSPORT_ALIASES
from kombu.transport import redis as kombu_redis
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import loads

_MESSAGE_KEYS = ("body", "properties", "headers")


def _decode(item: bytes) -> dict[str, Any] | None:
    """The kombu payload in *item*, or None when it is garbage."""
    try:
        payload = loads(bytes_to_str(item))
    except (ValueError, TypeError, UnicodeDecodeError):
        return None
    if not isinstance(payload, dict) or not all(k in payload for k in _MESSAGE_KEYS):
        return None
    if not isinstance(payload.get("properties"), dict):
        return None
    return payload


class _GarbageTolerant:
    """Mixin for kombu's Redis channels."""

    @contextmanager
    def conn_or_acquire(self, client: Any = None) -> Iterator[Any]:
        """One client object (on the channel's connection pool) instead of one per call."""
        if client is None:
            client = self.__dict__.get("_sync_client")
            if client is None:
                client = self._sync_client = self._create_client()
        yield client

    def _dead_letter(self, item: bytes, queue: str) -> None:
        from appliance import deadletter
        from appliance.consumer import keep

        reason = "not a kombu JSON message (garbage on the queue list)"
        with self.conn_or_acquire() as client:
            keep(client, deadletter.make(item, reason, queue))

    def _brpop_read(self, **options: Any) -> bool:
        try:
            try:
                dest__item = self.client.parse_response(
                    self.client.connection,
                    "BRPOP",
                    **options,
                )
            except self.connection_errors:
                self.client.connection.disconnect()
                raise
            if not dest__item:
                raise Empty()
            dest, item = dest__item
            dest = bytes_to_str(dest).rsplit(self.sep, 1)[0]
            self._queue_cycle.rotate(dest)
            payload = _decode(item)
            if payload is None:
                self._dead_letter(item, dest)
                return True
            self.connection._deliver(payload, dest)
            return True
        finally:
            self._in_poll = None
            flush = getattr(self, "_flush_brpop_reauth", None)
            if flush is not None:
                flush()

    def _get(self, queue: str) -> dict[str, Any]:
        with self.conn_or_acquire() as client:
            for pri in self.priority_steps:
                while True:
                    item = client.rpop(self._q_for_pri(queue, pri))
                    if not item:
                        break
                    payload = _decode(item)
                    if payload is not None:
                        self._maybe_update_queues_expire(client, queue)
                        return payload
                    self._dead_letter(item, queue)
            self._maybe_update_queues_expire(client, queue)
            raise Empty()


class Channel(_GarbageTolerant, kombu_redis.Channel):
    pass


class Transport(kombu_redis.Transport):
    Channel = Channel


class SentinelChannel(_GarbageTolerant, kombu_redis.SentinelChannel):
    pass


class SentinelTransport(kombu_redis.SentinelTransport):
    Channel = SentinelChannel


def install() -> None:
    """Make redis://, rediss:// and sentinel:// URLs use these transports (idempotent)."""
    TRANSPORT_ALIASES["redis"] = f"{__name__}:Transport"
    TRANSPORT_ALIASES["rediss"] = f"{__name__}:Transport"
    TRANSPORT_ALIASES["sentinel"] = f"{__name__}:SentinelTransport"
