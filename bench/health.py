"""Benchmark: `appliance health` vs `celery inspect ping` against the same running worker.

Run by hand (never part of the tests):  .venv/bin/python bench/health.py [--rounds N]
Starts its own redis-server (ephemeral port) and one `appliance worker`, then times
both probes alternately, process start included, and reads each probe's peak RSS from
wait4(). Prints medians and the ratios (goal: wall <= 0.1x, RSS <= 40 MB).
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


def probe(argv: list[str], env: dict[str, str]) -> tuple[float, float, int]:
    """(wall seconds, peak RSS MiB, exit code) of one run of *argv*."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    return wall, usage.ru_maxrss / 1024, proc.returncode


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    report(measure(args.rounds))


if __name__ == "__main__":
    main()
