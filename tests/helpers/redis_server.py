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

    def url(self, db: int | None = None) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}{self.host}:{self.port}/{self.db if db is None else db}"

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


@contextmanager
def local_redis_server(
    workdir: Path, *extra: str, conf: Path | None = None, password: str | None = None
) -> Iterator[tuple[RedisServer, subprocess.Popen[bytes]]]:
    """A redis-server process on a free loopback port, stopped on exit.

    A *password* goes into a config file, never onto the command line (`ps` shows that).
    """
    binary = shutil.which("redis-server")
    assert binary, "redis-server not installed"
    port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    if password:
        conf = conf or workdir / "auth.conf"
        conf.write_text((conf.read_text() if conf.exists() else "") + f"requirepass {password}\n")
    args = [
        binary,
        *([str(conf)] if conf else []),
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(workdir),
        "--logfile",
        str(workdir / "redis.log"),
        *extra,
    ]
    proc = subprocess.Popen(args, start_new_session=True)
    server = RedisServer("127.0.0.1", port, password=password)
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
