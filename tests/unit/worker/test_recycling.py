"""Recycling without servers: unique-memory parsing, jittered limits, the per-task check."""

from __future__ import annotations

import logging
import os
import random
import sys

import celery.concurrency
import pytest
from billiard.pool import EX_RECYCLE, READY
from billiard.queues import _SimpleQueue

from appliance.config.settings import load_settings
from appliance.worker import recycling
from appliance.worker.launch import WorkerOptions, worker_argv
from appliance.worker.prefork.pool import RETIRING, RecyclingWorker
from appliance.worker.recycling import (
    RecyclePolicy,
    check_fresh_child,
    jittered_limit,
    parse_smaps_rollup,
    parse_statm,
    read_uss_kib,
)

ROLLUP = """\
00400000-7ffc446be000 ---p 00000000 00:00 0                              [rollup]
Rss:               71016 kB
Pss:               61439 kB
Shared_Clean:      14872 kB
Shared_Dirty:          0 kB
Private_Clean:        44 kB
Private_Dirty:     56100 kB
Anonymous:         56100 kB
"""


def test_unique_memory_is_private_clean_plus_private_dirty() -> None:
    assert parse_smaps_rollup(ROLLUP) == 44 + 56100
    assert parse_smaps_rollup("Rss: 10 kB\nPss: 5 kB\n") is None


def test_statm_gives_resident_and_resident_minus_shared() -> None:
    # size resident shared text lib data dt, in pages
    assert parse_statm("765 435 407 5 0 123 0", page_kib=4) == (435 * 4, (435 - 407) * 4)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_this_process_has_unique_memory_and_a_missing_one_has_none() -> None:
    uss = read_uss_kib()
    assert uss is not None and uss > 0
    assert read_uss_kib(os.getpid()) is not None
    assert read_uss_kib(2**22 + 7) is None  # above the kernel's pid_max


def test_task_limits_are_jittered_within_ten_percent() -> None:
    rng = random.Random(7)
    draws = {jittered_limit(100, rng=rng) for _ in range(2000)}
    assert min(draws) == 90 and max(draws) == 110
    assert {jittered_limit(3, rng=rng) for _ in range(100)} == {3}
    assert jittered_limit(1) == 1


class Fake:
    """Measurements a test sets, counting how often USS was read."""

    def __init__(self, rss: int, uss: int) -> None:
        self.rss, self.uss, self.now, self.uss_reads = rss, uss, 0.0, 0

    def read_uss(self) -> int:
        self.uss_reads += 1
        return self.uss

    def policy(self, memory_limit: int | None, task_limit: int | None = None) -> RecyclePolicy:
        return RecyclePolicy(
            task_limit,
            memory_limit,
            measure_rss=lambda: self.rss,
            measure_uss=self.read_uss,
            clock=lambda: self.now,
            recheck_seconds=1.0,
        )


def test_a_task_limit_retires_on_the_nth_task() -> None:
    policy = Fake(rss=0, uss=0).policy(None, task_limit=3)
    assert policy.check(2) is None
    reason = policy.check(3)
    assert reason is not None and reason.kind == "tasks"
    assert reason.describe() == "ran 3 tasks (limit 3)"


def test_below_the_limit_by_rss_unique_memory_is_not_even_read() -> None:
    fake = Fake(rss=90_000, uss=5_000)
    assert fake.policy(100_000).check(1) is None
    assert fake.uss_reads == 0


def test_rss_above_the_limit_but_little_unique_memory_does_not_retire() -> None:
    # A fresh child of a big main process (celery #4125): RSS counts shared pages.
    fake = Fake(rss=300_000, uss=8_000)
    policy = fake.policy(100_000)
    assert [policy.check(n) for n in range(1, 4)] == [None, None, None]
    assert fake.uss_reads == 1  # then only RSS until it grows or a second passes
    fake.now = 1.5
    assert policy.check(4) is None and fake.uss_reads == 2


def test_growth_past_the_headroom_is_measured_at_once_and_retires() -> None:
    fake = Fake(rss=300_000, uss=8_000)
    policy = fake.policy(100_000)
    assert policy.check(1) is None
    fake.rss, fake.uss = 455_000, 160_000  # the task kept 150 MB
    reason = policy.check(2)
    assert reason is not None and (reason.kind, reason.measured) == ("memory", 160_000)
    assert "160000 KiB is above the limit 100000 KiB" in reason.describe()


def test_a_limit_below_a_fresh_childs_footprint_is_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    if read_uss_kib(os.getpid()) is None:
        pytest.skip("no /proc")
    caplog.set_level(logging.INFO, logger="appliance.recycling")
    assert check_fresh_child(os.getpid(), None) is None
    check_fresh_child(os.getpid(), 10**9)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    check_fresh_child(os.getpid(), 1)
    warning = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warning) == 1 and "every child is replaced" in warning[0].getMessage()


def test_the_child_says_retiring_before_its_last_result_then_exits() -> None:
    inq, outq = _SimpleQueue(), _SimpleQueue()
    worker = RecyclingWorker(inq, outq, maxtasks=2)
    worker._make_child_methods()
    worker.on_loop_start(pid=4242)
    worker.outq.put((READY, ("job-1",)))
    assert worker.retiring is None
    worker.outq.put((READY, ("job-2",)))
    sent = [outq.get()[0] for _ in range(4)]
    assert sent[1:] == [READY, RETIRING, READY]  # after WORKER_UP
    with pytest.raises(SystemExit) as exited:
        worker.wait_for_job()
    assert exited.value.code == EX_RECYCLE


def test_a_retiring_child_exits_with_billiards_code_on_both_topologies() -> None:
    # billiard replaces a prefork child that exits with it without a word; the consumers'
    # parent reads the same code as a consumer's retirement.
    assert recycling.EX_RECYCLE == EX_RECYCLE


def test_the_worker_runs_on_the_recycling_pool() -> None:
    argv = worker_argv(load_settings(), WorkerOptions())
    assert argv[argv.index("--pool") + 1] == "custom"
    assert celery.concurrency.ALIASES["custom"] == "appliance.worker.prefork.pool:TaskPool"
    assert "--" not in argv


def test_a_zero_flag_overrides_the_setting_as_never(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APPLIANCE_MAX_TASKS_PER_CHILD", "500")
    argv = worker_argv(load_settings(), WorkerOptions(max_tasks_per_child=0))
    assert argv[-2:] == ["--", "worker_max_tasks_per_child=(json)null"]
    assert "--max-tasks-per-child" not in argv
