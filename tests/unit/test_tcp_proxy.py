"""The test TCP proxy forwards, blackholes without closing, and resets with RST."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator

import pytest

from tests.helpers.processes import wait_until
from tests.helpers.tcp_proxy import TcpProxy


@pytest.fixture
def echo_port() -> Iterator[int]:
    """A loopback echo server (one thread per connection)."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.05)
    stop = threading.Event()

    def echo(conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            while data := conn.recv(4096):
                conn.sendall(data)

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            threading.Thread(target=echo, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join(5)
    server.close()


def _roundtrip(sock: socket.socket, data: bytes) -> bytes:
    sock.sendall(data)
    received = b""
    while len(received) < len(data):
        chunk = sock.recv(4096)
        if not chunk:
            break
        received += chunk
    return received


def test_forwards_blackholes_and_resets(echo_port: int) -> None:
    with TcpProxy("127.0.0.1", echo_port) as proxy:
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
            assert _roundtrip(sock, b"ping") == b"ping"
            wait_until(lambda: proxy.connections == 2, 5, "both sides tracked")

            proxy.blackhole()
            sock.settimeout(0.5)
            sock.sendall(b"lost?")
            with pytest.raises(TimeoutError):
                sock.recv(4096)  # nothing comes back, yet the connection is open
            assert proxy.connections == 2

            proxy.restore()  # what waited in the buffers goes through
            sock.settimeout(5)
            assert sock.recv(4096) == b"lost?"

            proxy.blackhole()
            assert proxy.reset() == 2
            with pytest.raises(ConnectionResetError):
                sock.recv(4096)

        # After a reset the proxy forwards new connections again.
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
            assert _roundtrip(sock, b"again") == b"again"


def test_a_clean_close_releases_both_sockets(echo_port: int) -> None:
    with TcpProxy("127.0.0.1", echo_port) as proxy:
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
            assert _roundtrip(sock, b"x") == b"x"
        wait_until(lambda: proxy.connections == 0, 5, "the closed pair to be released")
