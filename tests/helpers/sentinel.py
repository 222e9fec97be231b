"""A real Redis Sentinel group on loopback: a master, one replica and three sentinels.

Every process listens on an ephemeral 127.0.0.1 port and is stopped when the context
manager exits. The sentinels fail over quickly (down-after 1 s) so tests do not wait.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import redis

from tests.helpers.processes import free_port, wait_until
from tests.helpers.redis_server import loopback_args

MASTER_NAME = "appliance"
DOWN_AFTER_MS = 1000
FAILOVER_TIMEOUT_MS = 5000


@dataclass
class SentinelGroup:
    """The processes of one Sentinel group and the URLs the appliance uses to reach it."""

    master_port: int
    replica_port: int
    sentinel_ports: list[int]
    master: subprocess.Popen[bytes]
    replica: subprocess.Popen[bytes]
    sentinels: list[subprocess.Popen[bytes]] = field(default_factory=list)
    name: str = MASTER_NAME

    def url(self, db: int = 0) -> str:
        """kombu's and Celery's form: one sentinel:// item per sentinel, joined by ';'."""
        return ";".join(f"sentinel://127.0.0.1:{port}/{db}" for port in self.sentinel_ports)

    def sentinel_client(self, index: int = 0) -> redis.Redis:
        return redis.Redis(
            "127.0.0.1", self.sentinel_ports[index], socket_timeout=2, socket_connect_timeout=2
        )

    def node(self, port: int, db: int = 0) -> redis.Redis:
        return redis.Redis("127.0.0.1", port, db=db, socket_timeout=5, socket_connect_timeout=2)

    def masters_seen(self) -> set[int | None]:
        """The master port each live sentinel names (None when one does not answer)."""
        seen: set[int | None] = set()
        for index in range(len(self.sentinel_ports)):
            try:
                reply = self.sentinel_client(index).sentinel_get_master_addr_by_name(self.name)
                seen.add(int(reply[1]) if reply else None)
            except redis.RedisError:
                seen.add(None)
        return seen

    def kill_master(self) -> None:
        """SIGKILL the master: no shutdown save, no goodbye to its replica."""
        with contextlib.suppress(ProcessLookupError):
            self.master.send_signal(signal.SIGKILL)
        self.master.wait(10)


def _start(args: list[str], what: str) -> subprocess.Popen[bytes]:
    binary = shutil.which("redis-server")
    assert binary, f"redis-server not installed (needed for {what})"
    return subprocess.Popen([binary, *args], start_new_session=True)


def _server_args(workdir: Path, port: int, *extra: str) -> list[str]:
    workdir.mkdir(parents=True, exist_ok=True)
    return ["--port", str(port), *loopback_args(workdir), *extra]


def _sentinel_conf(workdir: Path, port: int, master_port: int) -> Path:
    workdir.mkdir(parents=True, exist_ok=True)
    conf = workdir / "sentinel.conf"  # Sentinel rewrites it: it must be writable
    conf.write_text(
        f"port {port}\n"
        "bind 127.0.0.1\n"
        f"dir {workdir}\n"
        f"logfile {workdir / 'sentinel.log'}\n"
        f"sentinel monitor {MASTER_NAME} 127.0.0.1 {master_port} 2\n"
        f"sentinel down-after-milliseconds {MASTER_NAME} {DOWN_AFTER_MS}\n"
        f"sentinel failover-timeout {MASTER_NAME} {FAILOVER_TIMEOUT_MS}\n"
        f"sentinel parallel-syncs {MASTER_NAME} 1\n"
    )
    return conf


def _answers(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextmanager
def sentinel_group(workdir: Path) -> Iterator[SentinelGroup]:
    """Start the group, wait until every sentinel agrees on the master and sees the replica."""
    started: list[subprocess.Popen[bytes]] = []
    try:
        master_port, replica_port = free_port(), free_port()
        master = _start(_server_args(workdir / "master", master_port), "the master")
        started.append(master)
        replica = _start(
            _server_args(
                workdir / "replica", replica_port, "--replicaof", "127.0.0.1", str(master_port)
            ),
            "the replica",
        )
        started.append(replica)
        group = SentinelGroup(master_port, replica_port, [], master, replica)
        wait_until(lambda: _answers(group.node(master_port)), 15, "the master to answer")
        wait_until(
            lambda: group.node(replica_port).info("replication").get("master_link_status") == "up",
            30,
            "the replica to sync with the master",
        )
        for index in range(3):
            port = free_port()
            conf = _sentinel_conf(workdir / f"sentinel-{index}", port, master_port)
            sentinel = _start([str(conf), "--sentinel"], "a sentinel")
            started.append(sentinel)
            group.sentinels.append(sentinel)
            group.sentinel_ports.append(port)

        def settled() -> bool:
            for proc in started:
                if proc.poll() is not None:
                    raise AssertionError(f"{proc.args} exited with {proc.returncode}")
            if group.masters_seen() != {master_port}:
                return False
            for index in range(3):
                client = group.sentinel_client(index)
                try:
                    state = client.sentinel_master(MASTER_NAME)
                    replicas = client.sentinel_slaves(MASTER_NAME)
                except redis.RedisError:
                    return False
                # Each sentinel knows the other two (quorum for a failover) and the replica.
                if int(state.get("num-other-sentinels", 0)) < 2:
                    return False
                if not any(int(r.get("port", 0)) == replica_port for r in replicas):
                    return False
            return True

        wait_until(settled, 60, "the sentinels to agree on the master and see the replica")
        yield group
    finally:
        for proc in reversed(started):
            _stop(proc)
