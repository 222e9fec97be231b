"""Engines and sessions for the task-record database (SQLite WAL or PostgreSQL)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from appliance.core import constants as C
from appliance.core.text import first_line, mask_url
from appliance.errors import ConfigError, DatabaseUnavailableError

_engines: dict[tuple[int, str], Engine] = {}


def normalize_url(url: str) -> str:
    """Map plain postgres URLs onto the psycopg 3 driver; leave others alone."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cursor = dbapi_conn.cursor()
    # WAL lets the health check and CLI read while workers write; NORMAL is durable
    # across application crashes and costs no fsync per commit.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute(f"PRAGMA busy_timeout={int(C.DB_LOCK_TIMEOUT_SECONDS * 1000)}")
    cursor.close()


def _build_engine(url: str) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        # No pre-ping: a file connection does not go stale, and the ping would cost a
        # round of SQL on every record write.
        engine = create_engine(url, connect_args={"timeout": C.DB_LOCK_TIMEOUT_SECONDS})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    require_driver(url)
    return create_engine(
        url,
        pool_pre_ping=True,
        pool_size=2,
        max_overflow=2,
        pool_timeout=C.DB_LOCK_TIMEOUT_SECONDS,
        connect_args={
            "connect_timeout": C.DB_CONNECT_TIMEOUT_SECONDS,
            # A record write never waits long on a lock or a slow server.
            "options": f"-c statement_timeout={int(C.DB_LOCK_TIMEOUT_SECONDS * 1000) * 5}",
        },
    )


def require_driver(url: str) -> None:
    """ConfigError (exit 78) naming the missing driver of a postgresql:// *url*."""
    if not normalize_url(url).startswith("postgresql+psycopg"):
        return
    try:
        import psycopg  # noqa: F401
    except ImportError as exc:
        shown = mask_url(url).replace("postgresql+psycopg://", "postgresql://", 1)
        raise ConfigError(
            f"APPLIANCE_DATABASE_URL={shown} is a PostgreSQL URL but its driver "
            f"psycopg is not installed ({first_line(exc)}); fix: install the postgres extra "
            "into this venv: pip install 'celery-appliance[postgres]' (or pip install "
            "'psycopg[binary]'); scripts/install.sh installs it"
        ) from None


def get_engine(url: str) -> Engine:
    """One engine per process and URL: a forked pool child never reuses its parent's sockets."""
    url = normalize_url(url)
    key = (os.getpid(), url)
    engine = _engines.get(key)
    if engine is None:
        engine = _engines[key] = _build_engine(url)
    return engine


def dispose_all() -> None:
    """Drop every engine of this process (tests; after fork)."""
    for (pid, _), engine in list(_engines.items()):
        if pid == os.getpid():
            engine.dispose()
    _engines.clear()


@contextmanager
def session_scope(url: str) -> Iterator[Session]:
    """A session that commits on success and rolls back on error."""
    factory = sessionmaker(get_engine(url), expire_on_commit=False)
    with factory() as session, session.begin():
        yield session


def unavailable_error(url: str, exc: Exception) -> DatabaseUnavailableError:
    """A one-line error for a database that cannot serve a command."""
    reason = first_line(getattr(exc, "orig", None) or exc)
    if "no such table" in reason or "does not exist" in reason:
        return DatabaseUnavailableError(
            f"the task-record database {mask_url(url)} has no schema yet ({reason}); "
            "fix: run `appliance db upgrade`"
        )
    return DatabaseUnavailableError(
        f"task-record database {mask_url(url)} is unreachable ({reason}); "
        "fix: check APPLIANCE_DATABASE_URL and that the database server is running"
    )


@contextmanager
def translate_errors(url: str) -> Iterator[None]:
    """Turn database errors inside the block into DatabaseUnavailableError."""
    try:
        yield
    except (SQLAlchemyError, OSError) as exc:
        raise unavailable_error(url, exc) from None


def transient(exc: Exception) -> bool:
    """A database error that may go away in a moment: locked, restarting, connection lost."""
    return isinstance(exc, OperationalError) or (
        isinstance(exc, DBAPIError) and exc.connection_invalidated
    )
