"""A minimal, synchronous Redis client (RESP2) for the health path.

redis-py costs ~80-120 ms to import here, more than the whole health check may take;
the checks need a dozen read commands, which this speaks over one socket. It also
reads Sentinel URLs (kombu's ``sentinel://H:P;sentinel://H:P/DB`` form): it asks the
sentinels for the master's address, then talks to that master.
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote, urlsplit, urlunsplit

from appliance.broker import reach

if TYPE_CHECKING:  # ssl (and libssl) is imported only for a rediss:// URL: health stays small
    import ssl

# What a reply may claim before it is taken for garbage (not Redis on that port): no
# reply the checks read comes near these (Redis's own proto-max-bulk-len is 512 MiB).
MAX_LINE_BYTES = 64 * 1024
MAX_BULK_BYTES = 512 * 1024 * 1024
MAX_ARRAY_ITEMS = 1_000_000


class RespError(Exception):
    """Raised for an error reply from Redis (e.g. NOAUTH, WRONGTYPE)."""


class RespConnectionError(Exception):
    """Raised when Redis cannot be reached or the connection breaks."""


class Resp:
    """One connection to one Redis database."""

    def __init__(self, url: str, timeout: float = 2.0, master_name: str | None = None) -> None:
        #: (host, port, sentinel that answered) when *url* is a sentinel:// URL.
        self.master: tuple[str, int, str] | None = None
        reach.reaching()  # the CLI's note of which broker it uses (armed by the CLI only)
        if url.startswith("sentinel://"):
            url, self.master = master_url(url, master_name, timeout)
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
                    sock = tls_context(parts.query).wrap_socket(
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
        except (OSError, ValueError, RecursionError) as exc:  # RecursionError: "*1" nested
            raise RespConnectionError(str(exc) or type(exc).__name__) from None
        for reply in replies:
            if isinstance(reply, RespError):
                raise reply
        return replies

    def _read(self) -> Any:
        line = self._file.readline(MAX_LINE_BYTES)
        if not line.endswith(b"\r\n"):
            if len(line) >= MAX_LINE_BYTES:
                raise RespConnectionError(f"not a Redis reply: {line[:40]!r}...")
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
            if size > MAX_BULK_BYTES:  # a garbage server: never allocate what it claims
                raise RespConnectionError(f"not a Redis reply: a bulk of {size} bytes")
            data = bytearray()
            while len(data) < size + 2:  # by chunks: memory grows only with what arrives
                chunk = self._file.read(min(size + 2 - len(data), 1 << 20))
                if not chunk:
                    raise RespConnectionError("connection closed by Redis")
                data += chunk
            return bytes(data[:-2])
        if kind == b"*":
            count = int(rest)
            if count > MAX_ARRAY_ITEMS:
                raise RespConnectionError(f"not a Redis reply: an array of {count} items")
            return None if count < 0 else [self._read() for _ in range(count)]
        raise RespConnectionError(f"not a Redis reply: {line[:40]!r}")


def scan(conn: Resp, pattern: str, count: int = 500) -> list[bytes]:
    """Every key matching *pattern* (SCAN, never KEYS: the broker is busy)."""
    found: list[bytes] = []
    cursor: Any = b"0"
    while True:
        cursor, batch = conn.call("SCAN", cursor, "MATCH", pattern, "COUNT", count)
        found += batch
        if cursor in (b"0", 0, "0"):
            return found


def sentinel_master(url: str, master_name: str, timeout: float = 2.0) -> tuple[str, int, str]:
    """Where the sentinels in *url* say *master_name*'s master is: (host, port, sentinel).

    The first sentinel that answers is believed (``SENTINEL get-master-addr-by-name``).
    """
    problems = []
    for item in url.split(";"):
        parts = urlsplit(item.strip())
        if not parts.hostname:
            continue
        host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
        where = f"{host}:{parts.port or 26379}"
        try:
            with Resp(f"redis://{where}", timeout) as conn:
                reply = conn.call("SENTINEL", "get-master-addr-by-name", master_name)
        except (RespConnectionError, RespError) as exc:
            problems.append(f"{where}: {exc}")
            continue
        if reply:
            return reply[0].decode(), int(reply[1]), where
        problems.append(f"{where}: no master named {master_name!r}")
    raise RespConnectionError(
        "no sentinel answered (" + "; ".join(problems or ["none listed"]) + ")"
    )


def master_url(
    url: str, master_name: str | None, timeout: float = 2.0
) -> tuple[str, tuple[str, int, str]]:
    """A redis:// URL for the current master of a sentinel:// *url*, and where it is.

    The password and database are the first item's (as kombu and Celery take them); the
    master name defaults to APPLIANCE_REDIS_SENTINEL_MASTER.
    """
    if not master_name:
        from appliance.config.envsource import raw_values

        master_name = raw_values().get("APPLIANCE_REDIS_SENTINEL_MASTER")
    if not master_name:
        raise RespConnectionError(
            "a sentinel:// URL needs the master's name; fix: set APPLIANCE_REDIS_SENTINEL_MASTER"
        )
    host, port, via = sentinel_master(url, master_name, timeout)
    first = urlsplit(url.split(";")[0].strip())
    auth = first.netloc.rpartition("@")[0]
    shown = f"[{host}]" if ":" in host else host
    netloc = f"{auth}@{shown}:{port}" if auth else f"{shown}:{port}"
    return urlunsplit(("redis", netloc, first.path, "", "")), (host, port, via)


_CERT_REQS = {
    "required": "CERT_REQUIRED",
    "cert_required": "CERT_REQUIRED",
    "optional": "CERT_OPTIONAL",
    "cert_optional": "CERT_OPTIONAL",
    "none": "CERT_NONE",
    "cert_none": "CERT_NONE",
}


def tls_context(query: str) -> ssl.SSLContext:
    """The TLS context of a rediss:// URL, from the query parameters kombu, Celery and
    redis-py read too: ssl_cert_reqs (required, the default; optional; none),
    ssl_ca_certs (a CA file; default: the system's CAs), ssl_certfile/ssl_keyfile (a
    client certificate) and ssl_check_hostname (true unless ssl_cert_reqs=none).
    """
    import ssl

    params = {k: v[-1] for k, v in parse_qs(query).items()}
    reqs = params.get("ssl_cert_reqs", "required").lower()
    if reqs not in _CERT_REQS:
        raise ValueError(f"ssl_cert_reqs={reqs!r} is not required, optional or none")
    context = ssl.create_default_context(cafile=params.get("ssl_ca_certs") or None)
    if params.get("ssl_certfile"):
        context.load_cert_chain(params["ssl_certfile"], params.get("ssl_keyfile") or None)
    check_hostname = params.get("ssl_check_hostname", "true").lower() not in ("false", "0", "no")
    verify_mode = ssl.VerifyMode[_CERT_REQS[reqs]]
    context.check_hostname = check_hostname and verify_mode != ssl.CERT_NONE
    context.verify_mode = verify_mode
    return context


def parse_info(raw: bytes | str) -> dict[str, str]:
    """INFO output as a flat dict of strings."""
    text = raw.decode() if isinstance(raw, bytes) else raw
    info: dict[str, str] = {}
    for line in text.splitlines():
        if line and not line.startswith("#") and ":" in line:
            key, _, value = line.partition(":")
            info[key] = value
    return info
