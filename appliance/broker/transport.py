"""kombu's Redis transport, minus the crash on a garbage queue item.

Stock kombu JSON-decodes each item it pops from a queue list inside the transport; a
non-JSON (or non-message) item raises there and the worker exits with "Unrecoverable
error". These subclasses move such an item to the dead-letter store and carry on.
They also keep one Redis client object per channel for the synchronous commands (kombu
builds a new one for every delivered message and every ack).

Ack-and-fetch: with acks late, stock kombu spends three Redis round trips per
message in the worker's main process - BRPOP, a MULTI/ZADD/HSET/EXEC to track the message
as unacked, and a MULTI/ZREM/HDEL/EXEC to ack it - and the worker's main process is the
bottleneck of a drain. Here an ack that frees a prefetch slot runs one Lua script that
acks and, in the same step, pops the next message and tracks it as unacked: one round
trip per message while the queues have work, and no moment where a popped message is
tracked nowhere (stock BRPOP pops first and tracks after: a worker killed in between
loses that message in Redis). BRPOP still waits when the queues are empty.
`install()` points kombu's redis/rediss/sentinel aliases at them, so URL parsing,
TLS and Sentinel stay exactly kombu's. _brpop_read and _get follow kombu 5.7.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from queue import Empty
from typing import Any

from celery.worker import state as worker_state
from kombu.asynchronous import get_event_loop
from kombu.transport import TRANSPORT_ALIASES, virtual
from kombu.transport import redis as kombu_redis
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import loads

from appliance.broker import scripts
from appliance.core.constants import RECORDS_JOURNAL_CAP
from appliance.worker.consumers import process as consumer_process
from appliance.worker.consumers.process import Carried, ConsumerProcessState

logger = logging.getLogger("appliance.consumer")

_MESSAGE_KEYS = ("body", "properties", "headers")


def _script_args(carried: Carried, state: ConsumerProcessState) -> list[Any]:
    """Ack-and-fetch's ARGV after the first two (lua/ack_and_fetch.lua): what the running
    task's ack carries, in a consumer process (ConsumerProcessState.results_with_ack and
    records_journal)."""
    result: list[Any] = ["", "", 0, 0, 0]
    if carried.result is not None and state.results_with_ack is not None:
        result = [*carried.result, *state.results_with_ack]
    if carried.record is not None and state.records_journal is not None:
        return [*result, state.records_journal, carried.record, RECORDS_JOURNAL_CAP]
    return [*result, "", "", 0]


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


class QoS(kombu_redis.QoS):
    """kombu's Redis QoS, knowing the messages ack-and-fetch tracked already.

    A fetched message holds its prefetch slot (an entry without a message in
    ``_delivered``) from just before it is delivered, which follows the script at once;
    its append then skips the tracking round trip (the script did it).
    """

    def append(self, message: Any, delivery_tag: str) -> None:
        if delivery_tag in self._delivered and self._delivered[delivery_tag] is None:
            virtual.QoS.append(self, message, delivery_tag)
            return
        super().append(message, delivery_tag)

    def reserve(self, delivery_tag: str) -> None:
        self._delivered[delivery_tag] = None


class _GarbageTolerant:
    """Mixin for kombu's Redis channels."""

    QoS = QoS

    def _purge(self, queue: str) -> int:
        # `celery purge` and control.purge() land here: the purged ids are remembered,
        # so the reconciler settles their records REVOKED instead of re-publishing them.
        from appliance.broker import purge

        with self.conn_or_acquire() as client:
            return sum(
                purge.purge_list(client, self._q_for_pri(queue, pri))[0]
                for pri in self.priority_steps
            )

    @contextmanager
    def conn_or_acquire(self, client: Any = None) -> Iterator[Any]:
        """One client object (on the channel's connection pool) instead of one per call."""
        if client is None:
            client = self.__dict__.get("_sync_client")
            if client is None:
                client = self._sync_client = self._create_client()
        yield client

    def _dead_letter(self, item: bytes, queue: str) -> None:
        from appliance.broker import deadletter
        from appliance.worker.consumer import keep

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
            if consumer_process.current().is_consumer:
                self._in_poll = None  # answered: the task's own ack may fetch the next
            dest, payload = self._popped(*dest__item)
            if payload is not None:
                self.connection._deliver(payload, dest)
            return True
        finally:
            self._in_poll = None
            flush = getattr(self, "_flush_brpop_reauth", None)
            if flush is not None:
                flush()

    def _popped(
        self, list_key: bytes, item: bytes, message: bool = True
    ) -> tuple[str, dict[str, Any] | None]:
        """The queue of *list_key* (a priority step's list) and the message in *item*, as
        BRPOP or ack-and-fetch took it; None (the item dead-lettered) for garbage, or when
        *message* is False (ack-and-fetch's script could not track it)."""
        dest = bytes_to_str(list_key).rsplit(self.sep, 1)[0]
        self._queue_cycle.rotate(dest)
        payload = _decode(item) if message else None
        if payload is None:
            self._dead_letter(item, dest)
        return dest, payload

    # -- ack-and-fetch ----------------------------------------------------------------

    def _free_slot(self, delivery_tag: str) -> None:
        """A consumer process: give up the local hold on a message whose ack could not be
        made; it stays unacked in Redis (another worker or this one's restart takes it
        back after the visibility timeout, as any unacked message). Holding its only
        prefetch slot, the consumer would never poll Redis again, and so never notice
        that Redis refuses or the connection is gone."""
        if consumer_process.current().is_consumer:
            self.qos._delivered.pop(delivery_tag, None)

    def _failed_ack(self, delivery_tag: str, carried: Carried, exc: Exception) -> None:
        """A consumer process's ack failed (Redis paused or refusing writes, connection
        gone). Celery drops an error of an ack made inside the task's delivery (the ack
        promise's error handler), so it is logged here. The result and record the ack
        carried are written first, with their own retries; the ack is made again with the
        next one only once they are, or the task would end acked without them: if they
        fail too, the message is left to come back at the visibility timeout."""
        state = consumer_process.current()
        if not state.is_consumer:
            return
        logger.error(
            "the ack of message %s failed (%s: %s)",
            delivery_tag,
            type(exc).__name__,
            exc,
        )
        self._free_slot(delivery_tag)
        carried.write_now()
        state.ack.owed.append(delivery_tag)

    def _pay_owed_acks(self, owed: list[str]) -> None:
        while owed:
            self.qos._remove_from_indices(owed[0]).execute()
            owed.pop(0)

    def basic_ack(self, delivery_tag: str, multiple: bool = False) -> None:
        state = consumer_process.current()
        carried = state.ack.take_carried()
        plain = self._plain_ack(state)
        if plain:
            try:
                carried.write_now()  # result and record before the ack
            except Exception:
                self._free_slot(delivery_tag)  # not written: no ack; it comes back
                raise
        try:
            self._pay_owed_acks(state.ack.owed)
            if plain:
                super().basic_ack(delivery_tag, multiple)
                return
            fetched = self._ack_and_fetch_script(delivery_tag, carried, state)
        except Exception as exc:
            self._failed_ack(delivery_tag, carried, exc)
            raise
        virtual.QoS.ack(self.qos, delivery_tag)
        _, key, item, tag = fetched
        if not key:
            return
        dest, payload = self._popped(key, item, message=bool(tag))
        if payload is None:
            return
        if state.is_consumer:
            self._deliver_next_turn(payload, dest, bytes_to_str(tag), state)
            return
        self._deliver_fetched(payload, dest, bytes_to_str(tag))

    def _plain_ack(self, state: ConsumerProcessState) -> bool:
        """kombu's own ack, without fetching the next message."""
        qos = self.qos
        inline = state.is_consumer
        return bool(
            get_event_loop() is None  # not a worker's event loop
            or not state.ack.fetch_on_ack
            or (inline and (worker_state.should_stop or worker_state.should_terminate))
            or (self.__dict__.get("_delivering") and not inline)
            or self._in_poll  # a BRPOP is out: it may deliver the next message itself
            or self.global_keyprefix
            or not self.active_queues
            or (
                qos.prefetch_count
                and len(qos._delivered) - len(qos._dirty) - 1 >= qos.prefetch_count
            )
        )

    def _ack_and_fetch_script(
        self, delivery_tag: str, carried: Carried, state: ConsumerProcessState
    ) -> Any:
        queues = self._queue_cycle.consume(len(self.active_queues))
        lists = [self._q_for_pri(queue, pri) for pri in self.priority_steps for queue in queues]
        keys = [self.unacked_index_key, self.unacked_key, *lists]
        with self.conn_or_acquire() as client:  # the channel's one client, see above
            script = self.__dict__.get("_ack_and_fetch")
            if script is None:
                script = self._ack_and_fetch = client.register_script(
                    scripts.source("ack_and_fetch")
                )
            args = _script_args(carried, state)
            fetched = script(keys=keys, args=[delivery_tag, time.time(), *args])
            if int(fetched[0]) < 0:  # the journal is full: the record goes directly
                carried.write_record_now()
                args = _script_args(carried, state)
                fetched = script(keys=keys, args=[delivery_tag, time.time(), *args])
        return fetched

    def _deliver_next_turn(
        self, payload: dict[str, Any], queue: str, tag: str, state: ConsumerProcessState
    ) -> None:
        """A consumer process (tasks run inline, where they are fetched, so a task's ack
        happens inside its own delivery): deliver from the event loop's next turn, not
        inside the current task; the tag is kept for the consumer's report to its parent."""
        state.ack.fetched_tag = tag
        self.qos.reserve(tag)  # the slot stays taken: no BRPOP meanwhile
        hub = get_event_loop()
        assert hub is not None  # basic_ack took this path inside the worker's event loop
        hub.call_soon(self._deliver_fetched, payload, queue, tag)
        waker = getattr(hub, "_waker", None)
        if waker is not None:
            waker.wake()  # the loop's next poll must not wait for it

    def _deliver_fetched(self, payload: dict[str, Any], queue: str, tag: str) -> None:
        """Deliver a message ack-and-fetch took (tracked as unacked already), now: an ack
        made on the way (a revoked or expired task is acked as it is received) is kombu's
        plain ack, so a run of such messages never recurses."""
        qos = self.qos
        if self.closed or queue not in self.connection._callbacks:
            # Nobody consumes it any more: back on its queue now, not at the visibility
            # timeout.
            qos.restore_by_tag(tag, leftmost=True)
            return
        qos.reserve(tag)
        self._delivering = True
        try:
            self.connection._deliver(payload, queue)
        finally:
            self._delivering = False

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
