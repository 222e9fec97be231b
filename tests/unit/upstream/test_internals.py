"""Every private celery, kombu, billiard and redis-py internal the appliance relies on.

One row per reliance: a private attribute or method, a positional argument, a process-wide
registry, a Redis layout read directly, or upstream code copied or bypassed (``fp``: a source
fingerprint; diff the function against the reviewed release, port the change to the named
module, then paste the new digest the failure prints). A failure is one line: what changed,
which appliance module breaks, what it does with it. Upgrade: bump the lock, run, read.

Instance attributes are asserted on real instances built without a server (a kombu channel
with redis-py's PING stubbed: Channel.__init__ pings; nothing forks); when one cannot be built,
its own row fails and the rows reading it skip. Where building one forks children (billiard's
Pool), the ``self.<name> =`` of an __init__ is asserted instead (``assigns``).
"""

from __future__ import annotations

import importlib.metadata
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.unit.upstream.probes import (
    AP,
    BE,
    BEAT,
    BP,
    CB,
    CON,
    CP,
    KEYS,
    KR,
    LAUNCH,
    LOST,
    MB,
    PB,
    PORT,
    PP,
    RB,
    RC,
    SKIP,
    STATS,
    SUP,
    VB,
    WC,
    WR,
    WS,
    A,
    Row,
    T,
    _app,
    _channel,
    _child_methods,
    _execute_args,
    _generated_checks_revoked,
    _Gone,
    _kombu,
    _mailbox,
    _message,
    _on_apply,
    _pidbox,
    _pool_alias,
    _pool_worker,
    _preloaded,
    _queue,
    _request,
    _resolve,
    _sent,
    _state_handlers,
    _Unbuilt,
    _waker,
    assigns,
    builds,
    close_instances,
    eq,
    fp,
    has,
    inst,
    keys,
    noop,
    params,
    src,
    that,
)

REQUEST = inst(lambda: _request()[0])
KEYS_READ = f"{KEYS} (health.checks and recovery.reconcile read it)"
EV, HB, HS = A + "worker.events", "celery.worker.heartbeat:Heart.", "celery.worker.consumer.heart:"


def _events_step_on_worker_events() -> bool:
    """Celery's Events step with no task events and no gossip, but the event heartbeat."""
    from types import SimpleNamespace

    events = _resolve("celery.worker.consumer.events:Events")
    step = events(
        SimpleNamespace(), task_events=False, without_heartbeat=False, without_gossip=True
    )
    return bool(step.enabled) and step.groups == ["worker"]


# fmt: off
ROWS = [
    # the real instances other rows read
    Row(KR + "Channel instance", f"{T}, {SUP} and {CON}", builds(_kombu), "read one " + SKIP),
    Row(AP + "Worker instance", PP, builds(_pool_worker), "reads one " + SKIP),
    Row("celery.worker.request:Request instance", f"{CP} and {LOST}", builds(_request),
        "read one " + SKIP),
    Row("celery:Celery instance", f"{A}idempotency, {LAUNCH}, {BEAT} and {KEYS}", builds(_app),
        "read what one builds " + SKIP),
    # appliance.broker.transport: kombu's Redis channel, QoS and transport, subclassed
    Row(KR + "Channel._brpop_read", T, fp("c42518699709f2df"),
        "overrides it with kombu 5.7's body plus dead-lettering of undecodable items" + PORT),
    Row(KR + "Channel._purge", T, fp("221e37da7c172561"),
        "replaces it to remember the purged task ids (broker.purge)" + PORT),
    Row(KR + "Channel._get", T, fp("be26a9f1eb4cf8da"),
        "overrides it with kombu 5.7's body plus dead-lettering of undecodable items" + PORT),
    Row(KR + "Channel.conn_or_acquire", T, fp("25883caca6c4121e"),
        "replaces it with one cached synchronous client per channel" + PORT),
    Row(KR + "Channel._brpop_start", T, fp("06723d707ddf2240"),
        "takes the lists in its order (priorities, then the queue cycle) in ack-and-fetch" + PORT),
    Row("kombu Channel.handlers BRPOP", T, that(lambda: _channel().handlers["BRPOP"].__func__
        is _resolve(KR + "Channel._brpop_read"), "no longer calls self._brpop_read"),
        "overrides _brpop_read, which kombu must dispatch BRPOP replies to"),
    Row(KR + "Channel._create_client", T, params("asynchronous"), "builds its one client so"),
    Row(KR + "Channel._in_poll", f"{T} and {SUP}", inst(_channel),
        "clear it when a BRPOP is answered, and read it (a BRPOP is out)"),
    Row(KR + "Channel._queue_cycle", T, that(lambda: callable(_channel()._queue_cycle.rotate)
        and callable(_channel()._queue_cycle.consume), "has no rotate() and consume()"),
        "rotates and consumes it as kombu's BRPOP does"),
    Row(KR + "Channel._q_for_pri", T, params("queue", "pri"), "names the lists it pops so"),
    Row(KR + "Channel._maybe_update_queues_expire", T, params("client", "queue"), "calls it"),
    Row(KR + "Channel._flush_brpop_reauth", T, has,
        "calls it after each BRPOP reply (by getattr: a rename silently stops re-auth)"),
    Row(KR + "Channel.basic_ack", T, params("delivery_tag", "multiple"),
        "overrides it to ack and fetch the next message in one script"),
    Row(VB + "Channel.qos", T, src("self.QoS("),
        "sets Channel.QoS to its QoS (kombu swaps in virtual.QoS when ack_emulation is off)"),
    Row(VB + "Transport.create_channel", T, src("self.Channel("),
        "sets (Sentinel)Transport.Channel to its channel subclasses"),
    Row(VB + "Transport._deliver", T, params("message", "queue"), "delivers fetched messages so"),
    Row(VB + "Transport._callbacks", T, inst(lambda: _kombu()[0].transport),
        "delivers a fetched message only while its queue is in it"),
    Row(VB + "QoS._delivered", T, inst(lambda: _channel().qos),
        "holds prefetch slots in it (None entries) for fetched messages"),
    Row(VB + "QoS._dirty", T, inst(lambda: _channel().qos),
        "counts taken prefetch slots as len(_delivered) - len(_dirty)"),
    Row(VB + "QoS.append", T, params("message", "delivery_tag"), "calls it unbound (no tracking)"),
    Row(VB + "QoS.ack", T, params("delivery_tag"), "calls it unbound once its script acked"),
    Row(KR + "QoS.append", T, fp("35c655f6ecc62fe6"),
        "writes its unacked entry [message._raw, exchange, routing_key] in Lua "
        "(worker.consumers.settle and recovery.reconcile parse it)" + PORT),
    Row(KR + "QoS._remove_from_indices", T, params("delivery_tag", "pipe"), "makes owed acks so"),
    Row(KR + "QoS.restore_by_tag", f"{T} and {A}worker.consumers.settle",
        params("tag", "client", "leftmost"), "put messages back with it (leftmost=True)"),
    Row("kombu.asynchronous.hub:Hub._waker", T, that(_waker, "is gone (or _Waker.wake is)"),
        "wakes the loop after call_soon (by getattr: a rename costs up to 1 s per task)"),
    Row("kombu.transport:TRANSPORT_ALIASES", T, keys("redis rediss sentinel"), "repoints these"),
    Row(KR + "Channel.from_transport_options", A + "config.profile", that(lambda: {
        "unacked_restore_interval", "unacked_restore_throttle", "unacked_mutex_expire"} <= set(
        _resolve(KR + "Channel.from_transport_options")), "lacks unacked_restore_*/mutex_expire"),
        "sets them (an unknown option is ignored)"),
    Row("redis:Redis.parse_response", T, params("connection", "command_name", "**options"),
        "reads the BRPOP reply with it, as kombu does"),
    Row(WS + "should_stop", f"{T} and {CP}", has, "read it / set it to EX_RECYCLE"),
    Row(WS + "should_terminate", f"{T} and {LOST}", has, "read it (cold shutdown)"),
    # appliance.worker.consumer: Celery's consumer, subclassed
    Row(VB + "Message._raw", f"{CON} and {LOST}", inst(_message),
        "dead-letter the raw payload from it (by getattr: a rename keeps the body only)"),
    Row("celery.worker.consumer.consumer:Consumer.create_task_handler", CON,
        src("call_soon_ack = self.call_soon_ack"), "overrides call_soon_ack to ack inline"),
    # appliance.broker.result_backend: Celery's Redis backends, subclassed
    Row(BE + "base:KeyValueStoreBackend._store_result", RB, fp("c0214af4c66e2999"),
        "replaces it (one round trip, never over a SUCCESS)" + PORT),
    Row(BE + "redis:RedisBackend._set_with_state", RB, fp("382faab236b68f16"),
        "bypasses it (so result_failure_expires is not applied)" + PORT),
    Row(BE + "redis:RedisBackend._set", RB, fp("93cac55f65fd7b4a"),
        "stores as it does (SET with expiry, PUBLISH) in Lua" + PORT),
    Row(BE + "base:BaseBackend._get_result_meta", RB,
        params("result", "state", "traceback", "request"), "builds the meta with it by keyword"),
    Row(BE + "redis:RedisBackend._MAX_STR_VALUE_SIZE", RB, has, "refuses larger results by it"),
    Row(BE + "redis:RedisBackend.on_task_call", RB, params("producer", "task_id"),
        "overrides it to publish without subscribing to the result"),
    Row("celery.app.backends:BACKEND_ALIASES", RB, keys("redis rediss sentinel"), "repoints these"),
    Row(BE + "redis:RedisBackend.__init__", A + "config.profile",
        src("'redis_backend_health_check_interval'"), "sets that undeclared setting"),
    # appliance.worker.prefork.pool: billiard's Pool and Celery's AsynPool, subclassed
    Row("celery.concurrency:ALIASES", LAUNCH, _pool_alias,
        "register a TaskPool as 'custom' for --pool custom (before importing celery.bin.worker)"),
    Row(AP + "ResultHandler.state_handlers", PP, _state_handlers, "adds RETIRING (16) to it"),
    Row(AP + "Worker.__init__", PP, params("inq", "outq", "synq", "initializer", "initargs",
        "maxtasks", "sentinel", "on_exit", "sigprotection", "wrap_exception",
        "max_memory_per_child", "on_ready_counter"), "passes them by position (None at 5, 10)"),
    Row(AP + "Worker.__reduce__", PP, that(lambda: _pool_worker().__reduce__()[1][5:11:5]
        == (7, 1234), "no longer has maxtasks at args[5] and max_memory_per_child at args[10]"),
        "rewrites args[5] and args[10]"),
    Row(BP + "Worker._make_child_methods", PP, that(_child_methods, "no longer sets wait_for_job"),
        "wraps the wait_for_job it sets, to exit a retiring child"),
    Row(BP + "Worker.__call__", PP, src("sys.exit = exit", "self._make_child_methods()",
        "self.on_loop_start(", "self.workloop("),
        "wraps outq and wait_for_job before workloop; exits a child with sys.exit(EX_RECYCLE)"),
    Row(BP + "Worker.workloop", PP, src("put = self.outq.put", "wait_for_job = self.wait_for_job"),
        "announces RETIRING through the outq.put and wait_for_job that workloop reads"),
    Row(BP + "Worker._ensure_messages_consumed", PP, fp("2349f7e1103d1029"),
        "replaces it (polls every millisecond)" + PORT),
    Row(BP + "Worker.on_ready_counter", PP, inst(_pool_worker), "polls the count in it"),
    Row(BP + "Worker.inqW_fd", PP, inst(_pool_worker), "takes a retiring child's out so"),
    Row(AP + "AsynPool._create_worker_process", PP, fp("3b0b7a4191fd09ae"),
        "bypasses it (no full gc.collect), sending worker_before_create_process itself" + PORT),
    Row(BP + "Pool._create_worker_process", PP, src("(self, i):", "self.Worker("),
        "calls it unbound, to fork children of its Worker class"),
    Row("celery.concurrency.prefork:TaskPool.on_start", PP, src("self.Pool"), "sets Pool"),
    # billiard's Pool forks its children as it is built: its attributes are checked in __init__
    Row(BP + "Pool._result_handler", PP, assigns, "drains a reaped child into its handler"),
    Row(BP + "Pool._pool", PP, assigns, "finds and kills children in it"),
    Row(BP + "Pool._state", PP, assigns, "starts a successor only while it is RUN"),
    Row(BP + "Pool._worker_handler", PP, assigns, "starts a successor only while it runs"),
    Row(BP + "PoolThread._state", PP, assigns, "reads it of _worker_handler"),
    Row(BP + "Pool._max_memory_per_child", PP, assigns, "checks the first child against it"),
    Row(AP + "AsynPool._all_inqueues", PP, assigns, "takes a retiring child's inqueue out"),
    Row(AP + "AsynPool._queues", PP, assigns, "adds a free set of pipes to it for a successor"),
    Row("billiard.process:BaseProcess._popen", PP, inst(lambda: _resolve("billiard:Process")()),
        "kills children whose _popen is set at the join deadline"),
    Row(AP + "_SimpleQueue._reader", PP, that(lambda: all(hasattr(_queue()._reader, m)
        for m in ("closed", "poll", "recv")), "has no closed, poll() and recv()"),
        "drains a reaped child's outq._reader without waiting"),
    Row(AP + "AsynPool.process_flush_queues", PP, fp("2227d473b879dde7"),
        "replaces it for reaped children" + PORT),
    Row(AP + "AsynPool._track_child_process", PP,
        src("fd = proc._sentinel_poll", "except AttributeError"),
        "pre-sets proc._sentinel_poll to a pidfd, for it to adopt"),
    Row(AP + "AsynPool._untrack_child_process", PP, src("os.close(sentinel_poll)"),
        "leaves closing that pidfd to it"),
    Row(AP + "AsynPool._event_process_exit", PP, params("hub", "proc"), "overrides it"),
    Row("billiard.util:get_pdeathsig", PP, has, "calls it once before forking (cffi's parser)"),
    # appliance.worker.consumers: the consumers topology (Celery's solo pool, subclassed)
    Row("billiard.util:set_pdeathsig", A + "worker.consumers.fork", has, "calls it"),
    Row(BP + "EX_RECYCLE", A + "worker.recycling", eq(0x9B),
        "hard-codes it as a retiring pool child's or consumer's exit code"),
    Row(WS + "maybe_shutdown", CP, src("WorkerShutdown(should_stop)"),
        "sets should_stop = EX_RECYCLE to exit with that code"),
    Row("celery.concurrency.solo:TaskPool.on_apply", CP, assigns,
        "replaces on_apply with its _apply after solo's __init__"),
    Row("celery Request.execute_using_pool args", CP, _execute_args,
        "reads args[0] name, args[1] id, args[2] request dict (properties.delivery_tag)"),
    Row(CB + "BasePool.apply_async", CP, _on_apply,
        "takes on_apply(target, args, kwargs, callback, accept_callback, soft_timeout, timeout)"),
    Row(WR + "on_accepted", CP, params("pid", "time_accepted"), "calls accept_callback so"),
    Row(CB + "apply_target", CP, fp("587f70580295464c"),
        "replaces it (_run: a task's sys.exit ends the consumer)" + PORT),
    Row(CB + "BasePool._get_info", CP, has, "extends it"),
    Row("celery and kombu modules preloaded", A + "worker.consumers.parent",
        that(_preloaded, "are not all importable"),
        "imports _WORKER_MODULES before forking (ImportError ignored: each consumer start pays)"),
    # appliance.worker.remote_control, appliance.worker.consumers.mailbox: remote control
    Row("celery Consumer.Blueprint.default_steps", CON, that(lambda: "celery.worker.consumer."
        "control:Control" in _resolve("celery.worker.consumer:Consumer").Blueprint.default_steps,
        "no longer lists celery.worker.consumer.control:Control"),
        "replaces that step with appliance.worker.remote_control:Control"),
    Row("celery.worker.consumer.control:Control.__init__", RC, src("self.box = (", "self.start = "
        "self.box.start", "self.stop = self.box.stop", "self.shutdown = self.box.shutdown"),
        "replaces box and the three methods taken from it after Celery's __init__"),
    Row(PB + "__init__", f"{RC} and {MB}", that(lambda: _pidbox().node.handlers is _resolve(
        WC + "Panel").data and {"consumer", "tset"} <= set(_pidbox().node.state),
        "no longer builds node with Panel.data and a state holding consumer and tset"),
        "replace node.handlers, node.state.consumer and node.state.tset"),
    Row(PB + "on_message", MB, src("self.node.handle_message(body, message)", "self.reset()"),
        "subclasses Pidbox for its on_message; reset() (after a failed message) is its own"),
    Row("kombu.pidbox:Node.handle", RC, src("self.handlers[method](self.state"),
        "looks commands up in a dict whose __missing__ reads Panel.data at each call"),
    Row(WC + "Panel.data", RC, has, "answers every command it does not override from it"),
    Row(WC + "_revoke", MB, fp("18694eabe82f3ae8"), "mirrors which states it marks REVOKED, "
        "for the requests a consumer holds and has not claimed" + PORT),
    Row(WC + "revoke", MB, fp("25c3bde7a118a14d"),
        "replaces it for a consumer (its reply shapes kept)" + PORT),
    Row(WC + "terminate", MB, src("revoke(state, task_id, terminate=True, signal=signal)"),
        "replaces it, as revoke with terminate (Celery's calls its own revoke directly)"),
    Row(WC + "shutdown", MB, src("raise WorkerShutdown("),
        "stops the unit instead (its thread would end on the SystemExit)"),
    Row(WC + "rate_limit", MB, src("state.consumer.reset_rate_limits()"),
        "hands reset_rate_limits to the event loop (LoopConsumer)"),
    Row("celery rate_limit command arguments", MB, that(lambda: params("state", "task_name",
        "rate_limit")(WC + "rate_limit") is None, "no longer takes (state, task_name, "
        "rate_limit)"), "calls it by keyword with the consumer's share of the rate"),
    Row(WC + "add_consumer", MB, src("state.consumer.call_soon("),
        "relies on it going through call_soon (run by the loop), also for cancel_consumer"),
    Row(WC + "cancel_consumer", MB, src("state.consumer.call_soon("), "relies on call_soon"),
    Row(WC + "active", MB, src("state.tset(worker_state.active_requests)"),
        "sets tset to set: a copy, taken again if the loop's thread changes it (reserved too)"),
    Row(WC + "autoscale", RC, params("state", "max", "min"), "calls it by keyword"),
    Row("celery.worker.consumer.consumer:Consumer.call_soon", MB, src("self.hub.call_soon(p)"),
        "schedules on the consumer's hub from the mailbox thread"),
    Row("kombu.asynchronous.hub:Hub.call_soon", MB, src("with self._ready_lock:",
        "threading.get_ident() != self._loop_thread", "waker.wake()"),
        "calls it from another thread, which must lock and wake the loop"),
    Row(WS + "requests", f"{MB} and {LOST}", has,
        "finds the requests a consumer holds in it (a request in it is claimed when checked)"),
    Row(WR + "revoked", LOST, src("revoked_by_id = self.id in revoked_tasks"),
        "claims a request before calling it, which must read the revoked set after"),
    Row("celery create_request_cls() execute_using_pool", LOST, that(_generated_checks_revoked,
        "no longer calls the inherited self.revoked() before apply_async"),
        "claims a request in revoked(), which the generated class must call on its way"),
    Row(WR + "terminate", LOST, fp("5ee69325b498e311"),
        "replaces it in a consumer: the parent kills it, never an ack from the thread" + PORT),
    Row("celery Request.on_accepted terminate", LOST, that(lambda: src(
        "self._terminate_on_ack is not None", "self.terminate(*self._terminate_on_ack)")(
        WR + "on_accepted") is None, "no longer terminates a request once accepted"),
        "sets _terminate_on_ack for a terminate that comes before the task starts"),
    Row("celery Request.claimed", LOST, that(lambda: not hasattr(_resolve(WR.rstrip(".")),
        "claimed"), "is now Celery's"), "adds a claimed attribute of its own"),
    # appliance.worker.supervision, appliance.worker.stats
    Row(KR + "MultiChannelPoller._channels", SUP, that(lambda: _channel()
        in _kombu()[0].transport.cycle._channels, "no longer holds the channels"),
        "walks it for overdue BRPOPs (by getattr: a rename disables the check)"),
    Row(KR + "Channel._brpop_sent_at", SUP, inst(_channel),
        "calls a BRPOP overdue by it (by getattr: a rename disables the check)"),
    Row("celery.worker.consumer.tasks:Tasks", SUP, has, "requires its bootstep by that path"),
    Row(WS + "revoked", SUP, has, "loads the revokes kept in Redis into it"),
    Row(WS + "reserved_requests", SUP, has, "reports its size in heartbeats"),
    Row(WS + "active_requests", f"{SUP} and {STATS}", has, "count running tasks in it"),
    Row(WS + "all_total_count", STATS, that(lambda: len(_resolve(WS + "all_total_count")) == 1,
        "is no one-item list"), "reads all_total_count[0] as the tasks started"),
    # appliance.worker.lost: its Request (also the base of appliance.worker.stats's)
    Row(WR + "on_failure", LOST, fp("21736ec661cd60d7"),
        "overrides it, mirroring its lost-child requeue decision" + PORT),
    Row("celery create_request_cls() on_failure", f"{LOST} and {STATS}",
        that(lambda: "on_failure" not in vars(type(_request()[0])), "now overrides it"),
        "override on_failure, which the generated class must inherit"),
    Row(WR + "_message", LOST, REQUEST, "counts losses and dead-letters through its channel"),
    Row(WR + "_request_dict", LOST, REQUEST, "reads the retries from it"),
    Row(WR + "_already_cancelled", LOST, has, "does not count a loss it caused"),
    Row(WR + "_already_revoked", LOST, has, "does not count a loss a revoke caused"),
    Row(WR + "_success_was_stored", LOST, has,
        "asks it once per loss, before counting it (a rename dead-letters stored successes)"),
    Row(WS + "task_ready", LOST, has, "calls it for a request it dead-letters"),
    Row(WR + "_context", LOST, REQUEST, "stores the FAILURE and sends task_failure with it"),
    Row("billiard.pool", LOST, src("'Worker exited prematurely: {0} Job: {1}.'"),
        "parses the child's status out of that WorkerLostError text"),
    Row("billiard.einfo:ExceptionWithTraceback.exc", f"{LOST} and {STATS}",
        that(lambda: _resolve("billiard.einfo:ExceptionWithTraceback")(noop, "tb").exc is noop,
             "no longer holds the exception"), "unwrap the child's exception from it"),
    Row("celery timelimit header", A + "idempotency", that(lambda: list(_sent().headers[
        "timelimit"]) == [10, 5], "is no longer [hard, soft]"), "reads timelimit[0] as hard"),
    # appliance.worker.launch
    Row("celery.bin.celery:celery.params[0]", LAUNCH, that(lambda: _resolve(
        "celery.bin.celery:celery").params[0].name == "app", "is no longer the --app option"),
        "sets (and resets) its default to the app"),
    Row("celery worker NAME=(json)null", LAUNCH, that(lambda: _app().loader.cmdline_config_parser(
        ["worker_max_tasks_per_child=(json)null"], namespace="worker") == {
        "worker_max_tasks_per_child": None}, "no longer parses to None"),
        "overrides a profile limit with it after --"),
    Row(KR + "Channel.keyprefix_fanout", LAUNCH,
        that(lambda: _channel().keyprefix_fanout == "/0.", "is not '/0.' on db 0"),
        "probes the pidbox channel /{db}.celery.pidbox"),
    Row(BE + "base:KeyValueStoreBackend.task_keyprefix", LAUNCH, eq("celery-task-meta-"),
        "probes publishing on celery-task-meta-* channels"),
    # appliance.worker.launch and appliance.worker.events: Celery's worker events
    Row("celery Events step with the event heartbeat only", LAUNCH, that(
        _events_step_on_worker_events, "is no longer enabled with the worker group alone"),
        "keeps the heartbeat so enable_events finds a dispatcher (worker events by default)"),
    Row(HS + "Heart", EV, has, "requires its bootstep by that path"),
    Row(HS + "Heart.stop", EV, src("c.heart and c.heart.stop()"),
        "clears consumer.heart so a retiring consumer sends no worker-offline"),
    Row(HB + "timer", EV, assigns, "swaps in a thread timer in a consumer process"),
    Row(HB + "tref", EV, assigns, "cancels it on the loop's timer, re-arms it on a thread"),
    Row(HB + "interval", EV, assigns, "beats at it from the thread"),
    Row(HB + "_send", EV, params("event", "retry"), "calls _send('worker-heartbeat') from it"),
    Row(HB + "start", EV, src("self.timer.call_repeatedly(", "self._send, ('worker-heartbeat',)"),
        "gives its thread timer the call_repeatedly(interval, fun, args) this makes"),
    Row(HB + "stop", EV, src("self.timer.cancel(self.tref)", "'worker-offline'"),
        "gives its thread timer the cancel(tref) this makes"),
    Row("celery.events.dispatcher:EventDispatcher.send", EV, src("with self.mutex:"),
        "publishes heartbeats from a thread while task events go out from the loop"),
    # appliance.beat.scheduler: celery.beat's PersistentScheduler, subclassed
    Row("celery.beat:Scheduler._heap", BEAT,
        inst(lambda: _resolve("celery.beat:Scheduler")(_app(), lazy=True)),
        "resets it to None to rebuild, and reads _heap[0]"),
    Row("celery.beat:event_t._fields", BEAT, eq(("time", "priority", "entry")),
        "reads the next due entry as _heap[0].time and .entry"),
    Row("celery.beat:Scheduler.reserve", BEAT, fp("49f129a9ca0a88b4"),
        "replaces it to record the run in Redis before the send" + PORT),
    Row("celery.beat:Scheduler.tick", BEAT, src("self.reserve(entry)", "self.apply_entry(entry"),
        "raises in reserve() to stop a send, so tick must reserve first"),
    # appliance.core.keys: kombu's and Celery's Redis layout, read directly
    Row(KR + "Channel.sep", f"{KEYS_READ} and {T}", eq("\x06\x16"),
        "name / split priority lists <queue>\\x06\\x16<step>"),
    Row(KR + "PRIORITY_STEPS", KEYS_READ, eq([0, 3, 6, 9]), "reads the lists of these steps"),
    Row(KR + "Channel.unacked_key", KEYS_READ, eq("unacked"), "reads that hash"),
    Row(KR + "Channel.unacked_index_key", KEYS_READ, eq("unacked_index"), "reads that zset"),
    Row(KR + "Channel._put", f"{KEYS} and {A}broker.deadletter", src("lpush"),
        "scan lists left to right / requeue with LPUSH, as kombu pushes left"),
    Row("celery control mailbox names", KEYS_READ, that(lambda: _mailbox() == (
        "celery.pidbox", "reply.celery.pidbox", "reply.celery.pidbox"), "changed"),
        "counts the reply keys *.reply.celery.pidbox"),
    # appliance.broker.admin, appliance.api
    Row(KR + "Channel.pool", A + "broker.admin", has, "builds a redis-py client on it"),
    Row("kombu.connection:Connection._ensure_connection", A + "api",
        src("errback(exc, interval)"), "gives publish retries an errback(exc, interval)"),
]
# fmt: on


@pytest.fixture(scope="module", autouse=True)
def _close_instances() -> Iterator[None]:
    yield
    close_instances()


@pytest.mark.parametrize("row", ROWS, ids=[row.target for row in ROWS])
def test_upstream_internal(row: Row) -> None:
    try:
        problem = row.check(row.target)
    except _Gone:
        problem = "is gone"
    except _Unbuilt as exc:
        pytest.skip(f"needs a real instance that {exc}")
    except Exception as exc:
        problem = f"cannot be checked ({type(exc).__name__}: {exc})"
    if problem:
        shown = row.target.replace(":", ".", 1)
        pytest.fail(" ".join(f"{shown} {problem}: {row.module} {row.use}".split()), pytrace=False)


@pytest.mark.parametrize("dist", ["celery", "kombu", "billiard", "redis"])
def test_installed_version_is_pinned(dist: str) -> None:
    pytest.importorskip("packaging")
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    pyproject = tomllib.loads((Path(__file__).parents[3] / "pyproject.toml").read_text())
    deps = [Requirement(d) for d in pyproject["project"]["dependencies"]]
    pins = [r.specifier for r in deps if canonicalize_name(r.name) == dist and r.specifier]
    assert pins, f"pyproject.toml pins no {dist} version; fix: pin it to the proven minor"
    installed = importlib.metadata.version(dist)
    if not all(pin.contains(installed, prereleases=True) for pin in pins):
        pytest.fail(
            f"{dist} {installed} is installed, outside pyproject.toml's "
            f"{', '.join(map(str, pins))}: the internals above are reviewed for the pinned "
            "range only; fix: sync the environment to the lock",
            pytrace=False,
        )
