"""A throwaway PostgreSQL database per session on a real server."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


@contextmanager
def session_postgres() -> Iterator[str]:
    import psycopg

    admin = os.environ.get("APPLIANCE_TEST_POSTGRES_URL", DEFAULT_ADMIN_URL)
    try:
        conn = psycopg.connect(admin, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        message = f"no PostgreSQL at {admin} ({str(exc).strip().splitlines()[0]})"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    name = f"appliance_test_{uuid.uuid4().hex[:10]}"
    with conn:
        conn.execute(f'CREATE DATABASE "{name}"')
        base = admin.rsplit("/", 1)[0]
        try:
            yield f"{base}/{name}"
        finally:
            from appliance.records.db import dispose_all

            dispose_all()
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
