"""A Redis lease: at most one holder at a time, known by a random token.

Taken with ``SET key token NX PX ttl``; renewed, released and used to fence writes
only by the token that took it. Each of those is a compare-and-act Lua script, atomic
on the server, so a holder that stalled past its TTL can never extend, drop or write
under its successor's lease.
"""

from __future__ import annotations

import secrets

import redis

from appliance.broker import scripts


class Lease:
    """One process's claim on the lease stored at *key*."""

    def __init__(self, client: redis.Redis, key: str, ttl: float, token: str | None = None) -> None:
        self.client = client
        self.key = key
        self.ttl = ttl
        self.token = token or secrets.token_hex(16)

    @property
    def _ttl_ms(self) -> int:
        return max(1, int(self.ttl * 1000))

    def acquire(self) -> bool:
        """Take the lease if nobody holds it."""
        return bool(self.client.set(self.key, self.token, nx=True, px=self._ttl_ms))

    def renew(self) -> bool:
        """Extend the lease to a full TTL if this token still holds it."""
        return self._run("renew_if_holds", [self.key], self.token, self._ttl_ms)

    def hold(self) -> bool:
        """Renew the lease, or take it if it is free; True if this token holds it now."""
        return self.renew() or self.acquire()

    def release(self) -> bool:
        """Delete the lease if this token holds it; never someone else's."""
        return self._run("delete_if_holds", [self.key], self.token)

    def remaining(self) -> float | None:
        """Seconds until the lease expires, whoever holds it; 0 if free, None if it never does."""
        pttl = int(self.client.pttl(self.key))
        if pttl == -1:
            return None
        return max(pttl, 0) / 1000

    def hset_if_held(self, key: str, field: str, value: str) -> bool:
        """HSET key field value, atomically with checking that this token holds the lease."""
        return self._run("hset_if_holds", [self.key, key], self.token, field, value)

    def _run(self, script: str, keys: list[str], *args: str | int) -> bool:
        return bool(self.client.eval(scripts.source(script), len(keys), *keys, *args))
