"""Tasks only the recycling tests load (APPLIANCE_TASK_MODULES=tests.integration.hog_tasks).

HOG_BALLAST_MB, read at import (in the worker's main process, before it forks), makes the
main process big, as large imports make a real one: its children map those pages but
share them, so they count in a child's RSS and not in its unique memory.
"""

from __future__ import annotations

import os

from appliance.celery_app import app

_ballast = bytearray(b"\1") * (int(os.environ.get("HOG_BALLAST_MB", "0")) << 20)
_held: list[bytearray] = []


@app.task(name="hog.hold")
def hold(mb: int) -> int:
    """Allocate *mb* MiB and keep it in this pool child; return the child's pid."""
    _held.append(bytearray(b"\1") * (mb << 20))
    return os.getpid()


@app.task(name="hog.pid")
def pid() -> int:
    """The pid of the pool child that runs this."""
    return os.getpid()
