"""Schema migrations of the task-record database (alembic), and whether it is current."""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, text

from appliance.errors import ConfigError
from appliance.records.db import get_engine, normalize_url, translate_errors

_MIGRATIONS = Path(__file__).with_name("migrations")
# Any constant works; it only has to be the same on every host sharing the database.
_PG_LOCK_ID = 0x41505043  # "APPC"


@dataclass(frozen=True)
class SchemaState:
    """Where a database stands against this code's migrations."""

    current: str | None
    head: str

    @property
    def is_current(self) -> bool:
        return self.current == self.head


def _config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(_MIGRATIONS))
    return cfg


def head_revision() -> str:
    head = ScriptDirectory.from_config(_config()).get_current_head()
    assert head is not None
    return head


def schema_state(url: str) -> SchemaState:
    """The database's revision and this code's head revision."""
    with translate_errors(url), get_engine(url).connect() as conn:
        current = MigrationContext.configure(conn).get_current_revision()
    return SchemaState(current=current, head=head_revision())


@contextmanager
def _migration_lock(conn: Connection, url: str) -> Iterator[None]:
    """Serialise upgrades: several hosts (PostgreSQL) or processes (SQLite) may start at once."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_lock(:id)"), {"id": _PG_LOCK_ID})
        try:
            yield
        finally:
            conn.execute(text("SELECT pg_advisory_unlock(:id)"), {"id": _PG_LOCK_ID})
            conn.commit()
        return
    database = conn.engine.url.database
    if not database or database == ":memory:":
        yield
        return
    with open(f"{database}.migrate.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def upgrade(url: str) -> SchemaState:
    """Bring the database to this code's head revision; return the state before."""
    url = normalize_url(url)
    before = schema_state(url)
    known = {rev.revision for rev in ScriptDirectory.from_config(_config()).walk_revisions()}
    if before.current is not None and before.current not in known:
        raise ConfigError(
            f"the task-record database is at schema revision {before.current}, newer than this "
            f"appliance knows ({before.head}); fix: upgrade the appliance package on this host"
        )
    with translate_errors(url), get_engine(url).connect() as conn, _migration_lock(conn, url):
        cfg = _config()
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")
        conn.commit()
    return before


def ensure_current(url: str, *, auto_upgrade: bool) -> None:
    """Upgrade (when allowed) or refuse a database that is not at this code's revision."""
    state = schema_state(url)
    if state.is_current:
        return
    if auto_upgrade:
        upgrade(url)
        return
    raise ConfigError(
        f"the task-record database schema is at {state.current or 'nothing'}, this appliance "
        f"needs {state.head}; fix: run `appliance db upgrade`"
    )
