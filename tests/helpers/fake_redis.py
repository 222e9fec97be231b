"""An in-memory stand-in for the few Redis commands beat's lease and scheduler (and the
heartbeat) use.

The lease's Lua scripts are mirrored in Python here; the real scripts run against a
real Redis in tests/integration/beat/test_lease.py.
"""

from __future__ import annotations

import time
from typing import Any

import redis

from appliance.broker import scripts


def _b(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


class FakeRedis:
    """Strings with expiry and hashes; `down = True` makes every command fail."""

    def __init__(self) -> None:
        self.strings: dict[str, tuple[bytes, float | None]] = {}
        self.hashes: dict[str, dict[bytes, bytes]] = {}
        self.down = False

    def _check(self) -> None:
        if self.down:
            raise redis.ConnectionError("Error 111 connecting to 127.0.0.1:6379.")

    def _live(self, name: str) -> bytes | None:
        value, deadline = self.strings.get(name, (None, None))
        if deadline is not None and time.monotonic() >= deadline:
            del self.strings[name]
            return None
        return value

    def set(
        self, name: str, value: Any, nx: bool = False, px: int | None = None, ex: int | None = None
    ) -> bool | None:
        self._check()
        if nx and self._live(name) is not None:
            return None
        ttl = px / 1000 if px else ex
        self.strings[name] = (_b(value), time.monotonic() + ttl if ttl else None)
        return True

    def get(self, name: str) -> bytes | None:
        self._check()
        return self._live(name)

    def delete(self, *names: str) -> int:
        self._check()
        found = [name for name in names if self._live(name) is not None or name in self.hashes]
        for name in names:
            self.strings.pop(name, None)
            self.hashes.pop(name, None)
        return len(found)

    def pttl(self, name: str) -> int:
        self._check()
        if self._live(name) is None:
            return -2
        deadline = self.strings[name][1]
        return -1 if deadline is None else int((deadline - time.monotonic()) * 1000)

    def hset(self, name: str, key: str, value: Any) -> int:
        self._check()
        self.hashes.setdefault(name, {})[_b(key)] = _b(value)
        return 1

    def hgetall(self, name: str) -> dict[bytes, bytes]:
        self._check()
        return dict(self.hashes.get(name, {}))

    def eval(self, script: str, numkeys: int, *args: Any) -> int:
        self._check()
        keys, argv = args[:numkeys], args[numkeys:]
        held = self._live(keys[0]) == _b(argv[0])
        if not held:
            return 0
        if script == scripts.source("renew_if_holds"):
            self.strings[keys[0]] = (_b(argv[0]), time.monotonic() + int(argv[1]) / 1000)
        elif script == scripts.source("delete_if_holds"):
            del self.strings[keys[0]]
        elif script == scripts.source("hset_if_holds"):
            self.hset(keys[1], argv[1], argv[2])
        else:
            raise AssertionError(f"script not mirrored: {script!r}")
        return 1
