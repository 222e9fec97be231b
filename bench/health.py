"""Benchmark: `appliance health` vs `celery inspect ping` against the same running worker.

Run by hand (never part of the tests):  .venv/bin/python bench/health.py [--rounds N]
Starts its own redis-server (ephemeral port) and one `appliance worker`, then times
both probes alternately, process start included, and reads each probe's peak RSS from
GNU time (`/usr/bin/time`; wait4() without it, which counts the bench's own). Prints
medians and the ratios (goal: wall <= 0.1x, RSS <= 40 MB).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.helpers.processes import ApplianceProcess
from tests.helpers.redis_server import local_redis_server

# GNU time (Debian's `time` package) reports its child's peak RSS from a small process.
# A probe spawned by this (large) Python process directly inherits its peak: Linux folds
# the peak RSS of the memory a process replaces at exec() into its own ru_maxrss, and
# fork() or vfork() hands the child the bench's memory first (60 MB read as the health
# probe's RSS when it was 18 MB).
GNU_TIME = "/usr/bin/time"


def probe(argv: list[str], env: dict[str, str]) -> tuple[float, float, int]:
    """(wall seconds, peak RSS MiB, exit code) of one run of *argv*."""
    with tempfile.NamedTemporaryFile("r", suffix=".rss") as rss:
        timed = os.access(GNU_TIME, os.X_OK)
        if timed:
            argv = [GNU_TIME, "-q", "-f", "%M", "-o", rss.name, *argv]
        start = time.perf_counter()
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        peak_kib = float(rss.read().split()[-1]) if timed else float(usage.ru_maxrss)
    return wall, peak_kib / 1024, os.waitstatus_to_exitcode(status)


Measures = dict[str, list[tuple[float, float, int]]]


def measure(rounds: int) -> Measures:
    """Time both probes *rounds* times each, alternating, against one running worker."""
    with (
        tempfile.TemporaryDirectory() as tmp,
        local_redis_server(Path(tmp) / "redis", "--maxmemory", "256mb", "--appendonly", "yes") as (
            server,
            _,
        ),
    ):
        env = {k: v for k, v in os.environ.items() if not k.startswith(("APPLIANCE_", "CELERY_"))}
        env.update(
            APPLIANCE_BROKER_URL=server.broker_url,
            APPLIANCE_RESULT_BACKEND=server.backend_url,
            APPLIANCE_DATABASE_URL=f"sqlite:///{tmp}/records.db",
            APPLIANCE_STATE_DIR=f"{tmp}/state",
            APPLIANCE_ENV_FILE=f"{tmp}/empty.env",
            APPLIANCE_HEALTH_EXPECT_BEAT="false",
        )
        Path(env["APPLIANCE_ENV_FILE"]).write_text("")
        worker = ApplianceProcess(["worker", "-c", "1"], env, Path(tmp) / "worker.log")
        try:
            worker.wait_for_output(" ready.")
            contenders = {
                "appliance health": [sys.executable, "-m", "appliance", "health"],
                "celery inspect ping": [
                    sys.executable,
                    "-m",
                    "celery",
                    "-A",
                    "appliance.celery_app",
                    "inspect",
                    "ping",
                ],
            }
            results: Measures = {name: [] for name in contenders}
            for _ in range(rounds):
                for name, argv in contenders.items():
                    results[name].append(probe(argv, env))
        finally:
            worker.terminate()
    return results


def report(results: Measures) -> None:
    rounds = len(next(iter(results.values())))
    print(f"\n5. {'probe':<22}{'wall p50':>10}{'RSS p50':>10}  exit codes")
    print(f"   ({rounds} rounds, alternating, process start included)")
    medians = {}
    for name, runs in results.items():
        wall = statistics.median(r[0] for r in runs)
        rss = statistics.median(r[1] for r in runs)
        medians[name] = (wall, rss)
        codes = sorted({r[2] for r in runs})
        print(f"   {name:<22}{wall * 1000:>8.0f}ms{rss:>8.1f}MB  {codes}")
    (hw, hr), (cw, cr) = medians["appliance health"], medians["celery inspect ping"]
    print(f"   wall ratio health/ping: {hw / cw:.3f}  (goal <= 0.1)")
    print(f"   health RSS: {hr:.1f} MB  (goal <= 40 MB); RSS ratio health/ping: {hr / cr:.2f}")
    if not os.access(GNU_TIME, os.X_OK):
        print(f"   (no {GNU_TIME}: each RSS includes the bench's own, see bench/health.py)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    report(measure(args.rounds))


if __name__ == "__main__":
    main()
