"""When a pool child is replaced: its unique memory, a jittered task limit, the check.

Celery (billiard) compares ``ru_maxrss`` with ``--max-memory-per-child``: the *peak*
resident set, which counts every page the child still shares copy-on-write with the
worker's main process. With a big main process a child fresh from fork() is already
"over", so every child is replaced after every task (celery #4125). What a child costs
the host is its unique set size (USS): the pages only it maps, ``Private_Clean +
Private_Dirty`` in /proc/<pid>/smaps_rollup.

Reading smaps_rollup walks the page tables (1-2 ms for a 70 MB process), too slow after
every task, so the check first reads the resident size from /proc/self/statm (about
10 µs). USS never exceeds RSS: below the limit nothing more is read. Above it, USS is
measured again only when RSS has grown by more than the headroom left at the last
measurement, or after ``USS_RECHECK_SECONDS`` (pages shared with the parent turn private
when written without RSS growing). Linux only; elsewhere nothing is measured and
children are not replaced for memory.

Task limits are drawn per child in [N - 10 %, N + 10 %], so that children started
together are not all replaced together.
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from appliance.core import constants as C

logger = logging.getLogger("appliance.recycling")

# The exit code of a pool child or a consumer process that retires: billiard's, which its
# pool replaces without a word, and the consumers' parent reads as "retired" likewise.
EX_RECYCLE = 0x9B

_PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024 if hasattr(os, "sysconf") else 4


def parse_smaps_rollup(text: str) -> int | None:
    """Private_Clean + Private_Dirty (KiB) from smaps_rollup text; None if absent."""
    fields: dict[str, int] = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key in ("Private_Clean", "Private_Dirty"):
            fields[key] = int(rest.split()[0])
    if len(fields) != 2:
        return None
    return fields["Private_Clean"] + fields["Private_Dirty"]


def parse_statm(text: str, page_kib: int = _PAGE_KIB) -> tuple[int, int]:
    """(resident, resident minus file-backed/shmem) in KiB from statm text."""
    parts = text.split()
    resident, shared = int(parts[1]), int(parts[2])
    return resident * page_kib, (resident - shared) * page_kib


def read_uss_kib(pid: int | str = "self") -> int | None:
    """Unique memory of a process in KiB, or None when it cannot be read.

    Falls back (kernels before 4.14) to statm's resident minus file-backed pages, which
    still counts anonymous pages shared with the parent: an overestimate.
    """
    proc = Path("/proc") / str(pid)
    try:
        uss = parse_smaps_rollup((proc / "smaps_rollup").read_text())
        if uss is not None:
            return uss
    except (OSError, ValueError, IndexError):
        pass
    try:
        return parse_statm((proc / "statm").read_text())[1]
    except (OSError, ValueError, IndexError):
        return None


def read_rss_kib() -> int | None:
    """Resident size of this process in KiB (cheap), or None off Linux."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return parse_statm(statm.read().decode())[0]
    except (OSError, ValueError, IndexError):
        return None


def jittered_limit(
    limit: int, spread: float = C.RECYCLE_TASK_JITTER, rng: random.Random | None = None
) -> int:
    """A task limit drawn uniformly from [limit*(1-spread), limit*(1+spread)], at least 1."""
    low = max(1, round(limit * (1 - spread)))
    high = max(low, round(limit * (1 + spread)))
    return (rng or random.Random()).randint(low, high)


class RecycleReason(NamedTuple):
    """Why a child retires: ``kind`` is "tasks" or "memory"; ``measured`` is tasks or KiB."""

    kind: str
    measured: int
    limit: int
    tasks: int

    def describe(self) -> str:
        if self.kind == "memory":
            return (
                f"unique memory {self.measured} KiB is above the limit {self.limit} KiB "
                f"(after {self.tasks} tasks)"
            )
        return f"ran {self.tasks} tasks (limit {self.limit})"


@dataclass
class RecyclePolicy:
    """The check a pool child runs after each task (see the module docstring)."""

    task_limit: int | None
    memory_limit_kib: int | None
    measure_rss: Callable[[], int | None] = read_rss_kib
    measure_uss: Callable[[], int | None] = read_uss_kib
    clock: Callable[[], float] = time.monotonic
    recheck_seconds: float = C.USS_RECHECK_SECONDS
    _last: tuple[int, int, float] | None = field(default=None, init=False)  # uss, rss, when

    def check(self, tasks_done: int) -> RecycleReason | None:
        """The reason to retire after *tasks_done* tasks, or None to carry on."""
        if self.task_limit and tasks_done >= self.task_limit:
            return RecycleReason("tasks", tasks_done, self.task_limit, tasks_done)
        if self.memory_limit_kib:
            uss = self._unique_memory_over_limit(self.memory_limit_kib)
            if uss is not None:
                return RecycleReason("memory", uss, self.memory_limit_kib, tasks_done)
        return None

    def _unique_memory_over_limit(self, limit: int) -> int | None:
        rss = self.measure_rss()
        if rss is not None and rss <= limit:
            return None
        now = self.clock()
        if self._last is not None and rss is not None:
            last_uss, last_rss, last_at = self._last
            grown = rss - last_rss
            if grown < limit - last_uss and now - last_at < self.recheck_seconds:
                return None
        uss = self.measure_uss()
        if uss is None:
            return None
        self._last = (uss, rss if rss is not None else uss, now)
        return uss if uss > limit else None


def check_fresh_child(pid: int, memory_limit_kib: int | None) -> int | None:
    """Log a fresh child's unique memory; warn when the limit is below it. Returns it.

    Warns rather than refusing to start: the footprint is known only once a child runs,
    and a worker that recycles too often still does its work (docs/architecture.md, Recycling).
    """
    if not memory_limit_kib:
        return None
    uss = read_uss_kib(pid)
    if uss is None:
        logger.warning(
            "cannot read the memory of pool child %d (no /proc); children will not be "
            "replaced for memory",
            pid,
        )
        return None
    logger.info(
        "a fresh pool child uses %d KiB of its own memory (limit %d KiB)", uss, memory_limit_kib
    )
    if uss >= memory_limit_kib:
        logger.warning(
            "the memory limit per child (%d KiB) is below a fresh child's own memory "
            "(%d KiB), so every child is replaced after each task; fix: raise "
            "APPLIANCE_MAX_MEMORY_PER_CHILD / --max-memory-per-child well above %d",
            memory_limit_kib,
            uss,
            uss,
        )
    return uss
