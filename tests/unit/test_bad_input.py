"""Bad input without servers: an oversized payload is refused before anything is written or
published, and `appliance health` pointed at a port that is not Redis answers with one
line (Nagios CRITICAL, exit 2) instead of a traceback or a hang."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from click.testing import CliRunner

from appliance import api, bulk
from appliance.celery_app import app
from appliance.cli import cli
from appliance.config.settings import get_settings
from appliance.core import exitcodes
from appliance.errors import SubmitOptionError
from appliance.records import store


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """What would have been published or recorded (nothing, when a submit is refused)."""
    calls: list[Any] = []
    monkeypatch.setattr(app, "send_task", lambda name, **kw: calls.append(("send", name)))
    monkeypatch.setattr(store, "record_published", lambda *a, **kw: calls.append("record"))
    monkeypatch.setattr(store, "record_published_many", lambda *a, **kw: calls.append("records"))
    return calls


def _cap(monkeypatch: pytest.MonkeyPatch, value: int) -> None:
    monkeypatch.setenv("APPLIANCE_MAX_PAYLOAD_BYTES", str(value))
    get_settings.cache_clear()


def test_the_default_cap_refuses_a_payload_over_one_mebibyte(sent: list[Any]) -> None:
    assert get_settings().max_payload_bytes == 1 << 20
    with pytest.raises(SubmitOptionError) as raised:
        api.submit("demo.sum", args=[["x" * 1024] * 1100])
    message = str(raised.value)
    assert "APPLIANCE_MAX_PAYLOAD_BYTES=1048576" in message and "bytes of JSON" in message
    assert "fix: pass a reference" in message and "\n" not in message
    assert raised.value.exit_code == exitcodes.USAGE
    assert sent == []  # no record written, nothing published


def test_a_configured_cap_is_kept_and_0_switches_it_off(
    monkeypatch: pytest.MonkeyPatch, sent: list[Any]
) -> None:
    _cap(monkeypatch, 100)
    api.submit("demo.add", args=[1, 2])  # small: accepted
    with pytest.raises(SubmitOptionError, match=r"demo.add are \d+ bytes of JSON, over"):
        api.submit("demo.add", args=["x" * 100, 2])
    with pytest.raises(SubmitOptionError, match="over APPLIANCE_MAX_PAYLOAD_BYTES=100"):
        api.submit("demo.add", kwargs={"x": "y" * 100, "y": 1})
    assert sent == [("send", "demo.add")]
    _cap(monkeypatch, 0)
    api.submit("demo.add", args=["x" * 100_000, 2])
    assert len(sent) == 2


def test_submit_many_refuses_the_whole_batch_naming_the_call(
    monkeypatch: pytest.MonkeyPatch, sent: list[Any]
) -> None:
    _cap(monkeypatch, 200)
    calls = [{"args": [1, 2]}, {"args": ["x" * 300, 2]}, {"args": [3, 4]}]
    with pytest.raises(SubmitOptionError) as raised:
        bulk.submit_many("demo.add", calls)
    assert str(raised.value).startswith("call 1: the arguments of demo.add are ")
    assert sent == []  # not even the records of the calls before it


def test_the_cli_refuses_an_oversized_payload_with_exit_2(monkeypatch: pytest.MonkeyPatch) -> None:
    _cap(monkeypatch, 50)
    result = CliRunner().invoke(cli, ["submit", "demo.add", "--args", f'["{"x" * 60}", 1]'])
    assert result.exit_code == exitcodes.USAGE, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("appliance: error: the arguments of demo.add")
    assert "APPLIANCE_MAX_PAYLOAD_BYTES=50" in lines[0]


# `appliance health` against a port that is not Redis ---------------------------------------


@pytest.fixture
def not_redis(request: pytest.FixtureRequest) -> Iterator[int]:
    """A loopback listener that answers every connection with fixed bytes, then closes."""
    reply: bytes = request.param
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                conn.settimeout(2)
                try:
                    conn.sendall(reply)
                    conn.recv(65536)  # the command; then close
                except OSError:
                    pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield int(server.getsockname()[1])
    finally:
        stop.set()
        thread.join(5)
        server.close()


@pytest.mark.parametrize(
    "not_redis",
    [
        b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n",
        b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n",
        b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03garbage",
        b"$99999999999\r\n",
        b"*1\r\n" * 5000,
        b"+OK\r\n" * 50,
        b"x" * 200_000,
        b"",
    ],
    ids=["http", "ssh", "tls", "huge-bulk", "deep-array", "says-ok", "long-line", "closes"],
    indirect=True,
)
def test_health_on_a_port_that_is_not_redis_is_critical_with_one_line(
    not_redis: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("APPLIANCE_BROKER_URL", f"redis://127.0.0.1:{not_redis}/0")
    result = CliRunner().invoke(cli, ["health"])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    assert result.exit_code == 2, result.output  # CRITICAL, not UNKNOWN: the system is broken
    first = result.output.splitlines()[0]
    assert first.startswith("APPLIANCE CRITICAL - ") and "Redis unreachable" in result.output
    assert "fix:" in result.output and "Traceback" not in result.output
