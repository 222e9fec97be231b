"""A call repeated on a daemon thread: for what a consumer process must keep doing while
its event loop's thread runs a task (heartbeats)."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from typing import Any


class Repeating:
    """Calls *fun* every *seconds* on a daemon thread (at once first, with *now*) until
    cancelled; an exception of *fun* is dropped and the next call made as planned."""

    def __init__(
        self,
        seconds: float,
        fun: Callable[..., Any],
        args: tuple[Any, ...] = (),
        *,
        name: str,
        now: bool = False,
    ) -> None:
        self._cancelled = threading.Event()

        def run() -> None:
            if now:
                with contextlib.suppress(Exception):
                    fun(*args)
            while not self._cancelled.wait(seconds):
                with contextlib.suppress(Exception):
                    fun(*args)

        threading.Thread(target=run, name=name, daemon=True).start()

    def cancel(self) -> None:
        self._cancelled.set()
