"""A real Redis for the tests, resolved once per session.

Order: APPLIANCE_TEST_REDIS_URL; else testcontainers when a Docker engine answers;
else a throwaway redis-server on an ephemeral port with persistence off; else skip
locally but fail when CI is set.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import redis

from tests.helpers.processes import free_port, wait_until


@dataclass(frozen=True)
class RedisServer:
    """Where the test Redis listens; broker on db N, results on db N+1."""

    host: str
    port: int
    db: int = 0
    password: str | None = None
    how: str = "redis-server"
    # An ACL user (with *password*); None = the default user (requirepass).
    username: str | None = None
    # The CA of a TLS-only server: URLs are rediss:// and verify the server against it.
    tls_ca: Path | None = None

    def url(
        self, db: int | None = None, *, username: str | None = None, password: str | None = None
    ) -> str:
        """A URL for database *db*, as this server's user or as *username*/*password*."""
        user = self.username if username is None else username
        secret = self.password if password is None else password
        auth = f"{user or ''}:{secret}@" if secret else ""
        scheme = "rediss" if self.tls_ca else "redis"
        query = f"?ssl_cert_reqs=required&ssl_ca_certs={self.tls_ca}" if self.tls_ca else ""
        return f"{scheme}://{auth}{self.host}:{self.port}/{self.db if db is None else db}{query}"

    @property
    def broker_url(self) -> str:
        return self.url(self.db)

    @property
    def backend_url(self) -> str:
        return self.url(self.db + 1)

    def client(self, db: int | None = None) -> redis.Redis:
        return redis.Redis.from_url(self.url(db), socket_timeout=5)

    def flush(self) -> None:
        for db in (self.db, self.db + 1):
            self.client(db).flushdb()


def _docker_answers() -> bool:
    if not os.environ.get("DOCKER_HOST") and not os.path.exists("/var/run/docker.sock"):
        return False
    import warnings

    try:
        import docker

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            client = docker.from_env(timeout=2)
            try:
                return bool(client.ping())
            finally:
                client.close()
    except Exception:
        return False


@dataclass(frozen=True)
class TlsFiles:
    """A throwaway CA and a server certificate for 127.0.0.1 / localhost (PEM files)."""

    ca: Path
    cert: Path
    key: Path


def make_tls_files(directory: Path) -> TlsFiles:
    """Generate a CA and a server certificate signed by it with the `openssl` CLI."""
    openssl = shutil.which("openssl")
    assert openssl, "openssl not installed"
    directory.mkdir(parents=True, exist_ok=True)
    ca, ca_key = directory / "ca.crt", directory / "ca.key"
    cert, key, csr = directory / "server.crt", directory / "server.key", directory / "server.csr"
    ext = directory / "san.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    steps = [
        ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-subj", "/CN=appliance test CA", "-keyout", str(ca_key), "-out", str(ca)],
        ["req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost",
         "-keyout", str(key), "-out", str(csr)],
        ["x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key),
         "-CAcreateserial", "-days", "2", "-extfile", str(ext), "-out", str(cert)],
    ]  # fmt: skip
    for step in steps:
        subprocess.run([openssl, *step], check=True, capture_output=True, timeout=60)
    return TlsFiles(ca, cert, key)


def loopback_args(workdir: Path) -> list[str]:
    """redis-server arguments of every test server: loopback, no persistence, files in workdir."""
    return ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(workdir),
            "--logfile", str(workdir / "redis.log")]  # fmt: skip


@contextmanager
def local_redis_server(
    workdir: Path,
    *extra: str,
    conf: Path | None = None,
    password: str | None = None,
    username: str | None = None,
    acl_users: tuple[str, ...] = (),
    tls: TlsFiles | None = None,
) -> Iterator[tuple[RedisServer, subprocess.Popen[bytes]]]:
    """A redis-server process on a free loopback port, stopped on exit.

    A *password* goes into a config file, never onto the command line (`ps` shows that).
    *acl_users* are ACL rules, one per user (e.g. "default off", "admin on >PW ~* &* +@all"),
    written to the config file; then *username*/*password* are what the returned server
    (the test's own client) logs in as, and no requirepass is set. With *tls* the server
    listens on TLS only (plain port 0) and its URLs are rediss://.
    """
    binary = shutil.which("redis-server")
    assert binary, "redis-server not installed"
    port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    if password or acl_users:
        conf = conf or workdir / "auth.conf"
        lines = [f"user {rule}" for rule in acl_users]
        if password and not acl_users:
            lines.append(f"requirepass {password}")
        conf.write_text(
            (conf.read_text() if conf.exists() else "") + "".join(f"{line}\n" for line in lines)
        )
        conf.chmod(0o600)
    listen = ["--port", str(port)]
    if tls:
        listen = ["--port", "0", "--tls-port", str(port), "--tls-cert-file", str(tls.cert),
                  "--tls-key-file", str(tls.key), "--tls-ca-cert-file", str(tls.ca),
                  "--tls-auth-clients", "no"]  # fmt: skip
    args = [
        binary,
        *([str(conf)] if conf else []),
        *listen,
        *loopback_args(workdir),
        *extra,
    ]
    proc = subprocess.Popen(args, start_new_session=True)
    server = RedisServer(
        "127.0.0.1", port, password=password, username=username, tls_ca=tls.ca if tls else None
    )
    try:

        def up() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"redis-server exited with {proc.returncode}")
            return _pings(server)

        wait_until(up, 15, "redis-server to answer PING")
        yield server, proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _pings(server: RedisServer) -> bool:
    try:
        return bool(server.client().ping())
    except redis.RedisError:
        return False


@contextmanager
def session_redis(workdir: Path) -> Iterator[RedisServer]:
    url = os.environ.get("APPLIANCE_TEST_REDIS_URL")
    if url:
        parts = urlsplit(url)
        yield RedisServer(
            parts.hostname or "127.0.0.1",
            parts.port or 6379,
            int(parts.path.strip("/") or 0),
            parts.password,
            how="env",
        )
        return
    if _docker_answers():
        from testcontainers.redis import RedisContainer

        with RedisContainer() as container:
            yield RedisServer(
                container.get_container_host_ip(),
                int(container.get_exposed_port(6379)),
                how="testcontainers",
            )
        return
    if shutil.which("redis-server"):
        with local_redis_server(workdir) as (server, _proc):
            yield server
        return
    message = "no Redis: set APPLIANCE_TEST_REDIS_URL, run Docker, or apt-get install redis-server"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)
