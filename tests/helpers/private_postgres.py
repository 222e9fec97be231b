"""A PostgreSQL cluster of one test alone (initdb + pg_ctl), which the test may stop.

The machine's shared PostgreSQL is never touched: the cluster lives in a fresh directory
on an ephemeral loopback port with its socket in its own directory, runs as the
`postgres` OS user when the tests run as root (PostgreSQL refuses to run as root), and
is stopped and deleted on exit.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers.processes import free_port


def _bindir() -> Path | None:
    """The newest /usr/lib/postgresql/*/bin with initdb and pg_ctl, else one on PATH."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: (
            int(Path(p).parent.parent.name) if Path(p).parent.parent.name.isdigit() else 0
        ),
    )
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb and shutil.which("pg_ctl") else None


@dataclass
class PrivateCluster:
    """One running cluster; `stop()` and `start()` act on it alone."""

    bindir: Path
    datadir: Path
    port: int
    as_user: list[str]

    @property
    def admin_url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def url(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def _pg_ctl(self, *args: str, timeout: float = 120) -> None:
        result = subprocess.run(
            [*self.as_user, str(self.bindir / "pg_ctl"), "-D", str(self.datadir), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if result.returncode != 0:
            log = (self.datadir / "server.log").read_text(errors="replace")[-3000:]
            raise AssertionError(
                f"pg_ctl {' '.join(args)} exited {result.returncode}: {result.stderr}\n{log}"
            )

    def start(self) -> None:
        options = f"-p {self.port} -k {self.datadir} -c listen_addresses=127.0.0.1 -c fsync=off"
        log = str(self.datadir / "server.log")
        self._pg_ctl("-l", log, "-o", options, "-w", "-t", "90", "start")

    def stop(self, mode: str = "fast") -> None:
        self._pg_ctl("-m", mode, "-w", "-t", "90", "stop")

    def running(self) -> bool:
        return (self.datadir / "postmaster.pid").exists()

    def create_database(self, name: str) -> str:
        import psycopg

        with psycopg.connect(self.admin_url, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


@contextlib.contextmanager
def private_postgres() -> Iterator[PrivateCluster]:
    """Start a private cluster (skip with the reason when PostgreSQL is not installed)."""
    bindir = _bindir()
    if bindir is None or not (bindir / "pg_ctl").exists():
        pytest.skip(
            "PostgreSQL server binaries (initdb, pg_ctl) not found in /usr/lib/postgresql/*/bin "
            "or on PATH; fix: apt-get install postgresql"
        )
    as_user: list[str] = []
    # Not under pytest's tmp_path: its parents are 0700 root, which `postgres` cannot enter.
    root = Path(tempfile.mkdtemp(prefix="appliance-pg-"))
    datadir = root / "data"
    datadir.mkdir()
    if os.geteuid() == 0:
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            shutil.rmtree(root, ignore_errors=True)
            pytest.skip("running as root and there is no `postgres` user to run PostgreSQL as")
        runuser = shutil.which("runuser")
        if runuser is None:
            shutil.rmtree(root, ignore_errors=True)
            pytest.skip("running as root and runuser (util-linux) is missing")
        os.chmod(root, 0o755)
        os.chown(datadir, user.pw_uid, user.pw_gid)
        as_user = [runuser, "-u", "postgres", "--"]
    cluster = PrivateCluster(bindir, datadir, free_port(), as_user)
    try:
        subprocess.run(
            [
                *as_user,
                str(bindir / "initdb"),
                "-D",
                str(datadir),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            ],
            capture_output=True,
            text=True,
            timeout=180,
            check=True,
        )
        cluster.start()
        yield cluster
    finally:
        if cluster.running():
            with contextlib.suppress(Exception):
                cluster.stop("immediate")
        shutil.rmtree(root, ignore_errors=True)
