"""A minimal, synchronous Redis client (RESP2) for the health path.

redis-py costs ~80-120 ms to import here, more than the whole health check may take;
the checks need a dozen read commands, which this speaks over one socket. Anything it
does not handle (Sentinel URLs) falls back to redis-py.
"""

from __future__ import annotations

import socket
import ssl
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit


class RespError(Exception):
    """Raised for an error reply from Redis (e.g. NOAUTH, WRONGTYPE)."""


class RespConnectionError(Exception):
    """Raised when Redis cannot be reached or the connection breaks."""


class Resp:
    """One connection to one Redis database."""

    def __init__(self, url: str, timeout: float = 2.0) -> None:
        parts = urlsplit(url)
        self._timeout = timeout
        try:
            if parts.scheme in ("unix", "redis+socket"):
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.settimeout(timeout)
                sock.connect(parts.path)
                db = int(
                    parse_qs(parts.query).get(
                        "virtual_host", parse_qs(parts.query).get("db", ["0"])
                    )[0]
                )
            else:
                sock = socket.create_connection(
                    (parts.hostname or "127.0.0.1", parts.port or 6379), timeout
                )
                if parts.scheme == "rediss":
                    sock = ssl.create_default_context().wrap_socket(
                        sock, server_hostname=parts.hostname
                    )
                db = int((parts.path or "/0").strip("/") or 0)
        except (OSError, ValueError) as exc:
            raise RespConnectionError(str(exc) or type(exc).__name__) from None
        self._sock = sock
        self._file = sock.makefile("rb")
        if parts.password:
            user = unquote(parts.username) if parts.username else None
            self.call("AUTH", *([user] if user else []), unquote(parts.password))
        if db:
            self.call("SELECT", db)

    def close(self) -> None:
        try:
            self._file.close()
            self._sock.close()
        except OSError:
            pass

    def __enter__(self) -> Resp:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def call(self, *args: Any) -> Any:
        """Send one command and return its decoded reply."""
        return self.pipeline([args])[0]

    def pipeline(self, commands: list[tuple[Any, ...]] | list[list[Any]]) -> list[Any]:
        """Send several commands in one write; replies in order (error replies raise)."""
        out = bytearray()
        for command in commands:
            out += b"*%d\r\n" % len(command)
            for arg in command:
                data = arg if isinstance(arg, bytes) else str(arg).encode()
                out += b"$%d\r\n%s\r\n" % (len(data), data)
        try:
            self._sock.sendall(out)
            replies = [self._read() for _ in commands]
        except (OSError, ValueError) as exc:
            raise RespConnectionError(str(exc) or type(exc).__name__) from None
        for reply in replies:
            if isinstance(reply, RespError):
                raise reply
        return replies

    def _read(self) -> Any:
        line = self._file.readline()
        if not line.endswith(b"\r\n"):
            raise RespConnectionError("connection closed by Redis")
        kind, rest = line[:1], line[1:-2]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            return RespError(rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            size = int(rest)
            if size < 0:
                return None
            data = self._file.read(size + 2)
            return data[:-2]
        if kind == b"*":
            count = int(rest)
            return None if count < 0 else [self._read() for _ in range(count)]
        raise RespConnectionError(f"not a Redis reply: {line[:40]!r}")


def parse_info(raw: bytes | str) -> dict[str, str]:
    """INFO output as a flat dict of strings."""
    text = raw.decode() if isinstance(raw, bytes) else raw
    info: dict[str, str] = {}
    for line in text.splitlines():
        if line and not line.startswith("#") and ":" in line:
            key, _, value = line.partition(":")
            info[key] = value
    return info
