"""Probes of upstream internals: each takes a target and returns a problem, or None.

Real instances are built without a server; see test_internals.py for the rows.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import importlib.util
import inspect
import json
from collections.abc import Callable
from functools import cache, cached_property
from typing import Any, Concatenate, NamedTuple, ParamSpec, TypeVar
from unittest import mock

Check = Callable[[str], "str | None"]
P = ParamSpec("P")
R = TypeVar("R")
_closers: list[Callable[[], object]] = []
_builders: list[Any] = []


class _Gone(Exception):
    pass


class _Unbuilt(Exception):
    pass


def _resolve(path: str) -> Any:
    """``module:Qual.name`` (or ``module``) to the object; _Gone when it does not exist."""
    modname, _, qual = path.partition(":")
    try:
        obj: Any = importlib.import_module(modname)
        for part in filter(None, qual.split(".")):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise _Gone from exc
    return obj


def _source(obj: Any) -> str:
    obj = obj.fget if isinstance(obj, property) else obj
    return inspect.getsource(obj.func if isinstance(obj, cached_property) else obj)


def _check(fn: Callable[Concatenate[str, P], str | None]) -> Callable[P, Check]:
    """``fn(target, *args)`` as a factory: ``fn(*args)`` is the check of a row's target."""
    return lambda *args, **kwargs: lambda target: fn(target, *args, **kwargs)


def has(target: str) -> str | None:
    _resolve(target)
    return None


def assigns(target: str) -> str | None:
    """An __init__ in the class's MRO sets ``self.<name> =``."""
    owner, attr = target.rsplit(".", 1)
    inits = [vars(k).get("__init__") for k in _resolve(owner).__mro__]
    found = any(f"self.{attr} =" in inspect.getsource(i) for i in inits if inspect.isfunction(i))
    return None if found else "is no longer set by __init__"


@_check
def that(target: str, ok: Callable[[], object], problem: str) -> str | None:
    return None if ok() else problem


@_check
def params(target: str, *names: str) -> str | None:
    """The parameters after self start with *names*: positions and keywords hold."""
    stars: dict[Any, str] = {inspect.Parameter.VAR_POSITIONAL: "*"}
    stars[inspect.Parameter.VAR_KEYWORD] = "**"
    sig = inspect.signature(_resolve(target)).parameters.values()
    got = [stars.get(p.kind, "") + p.name for p in sig if p.name != "self"]
    ok = got[: len(names)] == list(names)
    return None if ok else f"takes ({', '.join(got)}), not ({', '.join(names)})"


@_check
def fp(target: str, digest: str) -> str | None:
    got = hashlib.sha256(_source(_resolve(target)).encode()).hexdigest()[:16]
    return None if got == digest else f"changed upstream (sha256 {got}, reviewed {digest})"


@_check
def src(target: str, *snippets: str) -> str | None:
    """The source contains *snippets*, in this order."""
    text, at = _source(_resolve(target)), 0
    for snippet in snippets:
        if (at := text.find(snippet, at)) < 0:
            return f"no longer contains {snippet!r}" + (" in order" if snippets[1:] else "")
        at += len(snippet)
    return None


@_check
def inst(target: str, build: Callable[[], Any]) -> str | None:
    """A real instance from *build* has the target's last name."""
    owner, attr = target.rsplit(".", 1)
    _resolve(owner)
    return None if hasattr(build(), attr) else "is gone from a real instance"


@_check
def eq(target: str, expected: Any) -> str | None:
    value = _resolve(target)
    return None if value == expected else f"is {value!r}, not {expected!r}"


@_check
def keys(target: str, names: str) -> str | None:
    have = _resolve(target)
    missing = [n for n in names.split() if not isinstance(have, dict) or n not in have]
    return f"has no {', '.join(missing)} entry" if missing else None


@_check
def builds(target: str, build: Callable[[], Any]) -> str | None:
    try:
        build()
    except _Unbuilt as exc:
        return str(exc)
    return None


# -- real instances: built once per module, closed at its end ----------------------------------


def _real(build: Callable[[], R]) -> Callable[[], R]:
    @cache
    def built() -> R:
        try:
            return build()
        except Exception as exc:
            raise _Unbuilt(f"cannot be built ({type(exc).__name__}: {exc})") from exc

    _builders.append(built)
    return built


def _kept(obj: Any, *closers: Callable[[], object]) -> Any:
    _closers.extend(closers)
    return obj


@_real
def _kombu() -> tuple[Any, Any]:
    import redis

    with mock.patch.object(redis.Redis, "ping", return_value=True):  # no server is asked
        transport = _resolve(KR + "Transport")
        conn = _resolve("kombu:Connection")("redis://127.0.0.1:1/0", transport=transport)
        return _kept(conn, conn.release), conn.default_channel


def _channel() -> Any:
    return _kombu()[1]


def _message() -> Any:
    payload = _channel().prepare_message("{}", content_type="application/json")
    payload["properties"].update(delivery_tag="tag-1", delivery_info={})
    return _channel().message_to_python(payload)


def _queue(**kwargs: bool) -> Any:
    queue = _resolve(AP + "_SimpleQueue")(**kwargs)  # what AsynPool gives each child
    return _kept(queue, queue._reader.close, queue._writer.close)


@_real
def _pool_worker() -> Any:
    inq, outq = _queue(wnonblock=True), _queue(rnonblock=True)
    return _resolve(AP + "Worker")(inq, outq, None, None, (), 7, None, None, True, True, 1234, None)


def noop(*args: Any, **kwargs: Any) -> None:
    pass


@_real
def _app() -> Any:
    app = _resolve("celery:Celery")("upstream-internals", set_as_current=False, broker="memory://")
    app.task(name="t.noop", shared=False)(noop)
    return _kept(app, app.close)


def _sent() -> Any:
    return _app().amqp.as_task_v2("upstream-internals-1", "t.noop", args=(1,), kwargs={"k": 2},
                                  time_limit=10, soft_time_limit=5)  # fmt: skip


@_real
def _request() -> tuple[Any, tuple[Any, Any, dict[str, Any]]]:
    """A Request of Celery's generated worker class, and the pool.apply_async call it makes."""
    from celery.worker.request import Request, create_request_cls

    app, sent, calls = _app(), _sent(), []
    message = _resolve("kombu:Message")(
        body=json.dumps(sent.body), headers=sent.headers, content_type="application/json",
        content_encoding="utf-8", properties={"delivery_tag": "tag-1"},
    )  # fmt: skip

    class Pool:
        def apply_async(self, target: Any, args: Any = (), **kw: Any) -> None:
            calls.append((target, args, kw))

    task = app.tasks["t.noop"]
    request = create_request_cls(Request, task, Pool(), "host", None, app=app)(message, app=app)
    request.execute_using_pool(Pool())
    return request, calls[0]


def close_instances() -> None:
    """Close what the probes opened and forget the instances built."""
    while _closers:
        _closers.pop()()
    for build in _builders:
        build.cache_clear()


# -- checks of more than one look -------------------------------------------------------------


def _pool_alias(_: str) -> str | None:
    from celery import concurrency
    from celery.bin.worker import WorkersPool

    with mock.patch.dict(concurrency.ALIASES, custom="celery.concurrency.solo:TaskPool"):
        if "custom" not in WorkersPool().choices:
            return "no longer feeds the choices of --pool"
        resolved = concurrency.get_implementation("custom").__module__
    return None if resolved == "celery.concurrency.solo" else "is no longer read by --pool"


def _state_handlers(_: str) -> str | None:
    nones = [None] * 9  # outqueue, get, cache, poll, ..., on_job_ready
    kw: dict[str, Any] = {"fileno_to_outq": {}, "on_process_alive": noop}
    handler, got = _resolve(AP + "ResultHandler")(*nones, **kw), list[int]()
    if 16 in handler.state_handlers:
        return "already has a state 16"
    handler.state_handlers[16] = got.append
    handler.on_state_change((16, (123,)))
    return None if got == [123] else "no longer dispatches a state added to it"


def _child_methods() -> bool:
    _pool_worker()._make_child_methods()
    return callable(getattr(_pool_worker(), "wait_for_job", None))


def _execute_args(_: str) -> str | None:
    request, (_target, args, kw) = _request()
    request_dict = args[2] if len(args) > 2 and isinstance(args[2], dict) else {}
    tag = request_dict.get("properties", {}).get("delivery_tag")
    if tuple(args[:2]) != ("t.noop", request.id) or tag != "tag-1":
        return f"passes {tuple(args)[:3]!r}, not (name, id, request dict with properties)"
    missing = {"callback", "accept_callback", "soft_timeout", "timeout"} - kw.keys()
    return f"no longer passes {', '.join(sorted(missing))}" if missing else None


def _on_apply(_: str) -> str | None:
    (target, args, kw), pool, got = _request()[1], _resolve(CB + "BasePool")(limit=1), []
    pool.on_apply = lambda *a, **k: got.append((a, k))
    pool.apply_async(target, args, **kw)
    (a, k), need = got[0], {"callback", "accept_callback", "soft_timeout", "timeout"}
    ok = a[:2] == (target, args) and isinstance(a[2], dict) and need <= k.keys()
    return None if ok else f"calls on_apply{tuple(a)[:3]!r} with {sorted(k)}"


def _waker() -> bool:
    hub = _resolve("kombu.asynchronous:Hub")()
    _closers.append(hub.close)
    return hasattr(hub, "_waker") and callable(_resolve("kombu.asynchronous.hub:_Waker").wake)


def _mailbox() -> tuple[str, str, str]:
    box = _app().control.mailbox
    return box.exchange.name, box.reply_exchange.name, box.reply_queue.name.split(".", 1)[1]


def _pidbox() -> Any:
    """Celery's event-loop mailbox for a stand-in consumer (nothing connects)."""
    from types import SimpleNamespace

    loop = SimpleNamespace(use_eventloop=True)
    consumer = SimpleNamespace(app=_app(), hostname="n@h", controller=loop)
    return _resolve(PB.rstrip("."))(consumer)


def _generated_checks_revoked() -> bool:
    """Celery's generated Request class inherits revoked() and calls it before the pool."""
    generated = type(_request()[0])
    text = _source(generated.execute_using_pool)
    return "revoked" not in vars(generated) and 0 <= text.find("self.revoked()") < text.find(
        "apply_async("
    )


def _preloaded() -> bool:
    names = _resolve("appliance.worker.consumers.parent:_WORKER_MODULES")
    return all(importlib.util.find_spec(n) for n in names if not n.startswith("appliance."))


class Row(NamedTuple):
    target: str  # module:Qual.name, or a description (without a colon) of a composite check
    module: str  # the appliance module that breaks (new layout)
    check: Check
    use: str  # what that module does with it


# Targets: upstream modules, and the appliance modules that rely on them.
A = "appliance."
T, RB, CON = A + "broker.transport", A + "broker.result_backend", A + "worker.consumer"
PP, CP = A + "worker.prefork.pool", A + "worker.consumers.pool"
MB, RC = A + "worker.consumers.mailbox", A + "worker.remote_control"
SUP, LOST, STATS = A + "worker.supervision", A + "worker.lost", A + "worker.stats"
LAUNCH, BEAT, KEYS = A + "worker.launch", A + "beat.scheduler", A + "core.keys"
KR, VB = "kombu.transport.redis:", "kombu.transport.virtual.base:"
AP, BP, CB = "celery.concurrency.asynpool:", "billiard.pool:", "celery.concurrency.base:"
WR, WS, BE = "celery.worker.request:Request.", "celery.worker.state:", "celery.backends."
WC, PB = "celery.worker.control:", "celery.worker.pidbox:Pidbox."
PORT, SKIP = "; port the change", "(their rows skip until it builds)"
