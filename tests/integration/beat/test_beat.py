"""`appliance beat`: runs against a real Redis, keeps its state in the state dir, stops on TERM."""

from __future__ import annotations

import signal
from pathlib import Path

from appliance.config.settings import get_settings
from appliance.core import keys
from tests.helpers.processes import ApplianceProcess, wait_until
from tests.helpers.redis_server import local_redis_server


def test_beat_starts_keeps_state_and_stops_cleanly(
    appliance_env: dict[str, str], tmp_path: Path
) -> None:
    beat = ApplianceProcess(["beat", "--loglevel", "DEBUG"], appliance_env, tmp_path / "beat.log")
    try:
        beat.wait_for_output("beat: Starting...", timeout=60)
        state_dir = get_settings().state_dir
        wait_until(lambda: list(state_dir.glob("beat-schedule*")), 30, "the beat schedule file")
        beat.wait_for_output("appliance-cleanup-records", timeout=30)  # the nightly cleanup
    finally:
        code = beat.terminate(timeout=60)
    assert code == 0, beat.output()


def _wchan(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/wchan").read_text()
    except OSError:
        return ""


def test_sigterm_while_beat_waits_on_redis_exits_0_without_a_traceback(
    appliance_env: dict[str, str], tmp_path: Path
) -> None:
    """Celery's SIGTERM handler raises SystemExit wherever beat is, here inside a Redis read
    (Redis is paused); redis-py turns it into another error while closing the socket,
    which made beat log a CRITICAL traceback and exit 1."""
    with local_redis_server(tmp_path / "redis") as (server, redis_proc):
        env = dict(
            appliance_env,
            APPLIANCE_BROKER_URL=server.broker_url,
            APPLIANCE_RESULT_BACKEND=server.backend_url,
            APPLIANCE_BEAT_LEASE_TTL="3",  # a tick (and a Redis call) every second
        )
        beat = ApplianceProcess(["beat"], env, tmp_path / "beat.log")
        try:
            wait_until(lambda: server.client().get(keys.BEAT_LEASE_KEY), 60, "beat to lead")
            redis_proc.send_signal(signal.SIGSTOP)
            try:
                wait_until(
                    lambda: _wchan(beat.pid).startswith("poll_schedule_timeout"),
                    30,
                    "beat blocked in a Redis read",
                    0.05,
                )
                code = beat.terminate(timeout=60)
            finally:
                redis_proc.send_signal(signal.SIGCONT)
        finally:
            beat.terminate(timeout=60)
    assert code == 0, beat.output()
    assert "Traceback" not in beat.output()
