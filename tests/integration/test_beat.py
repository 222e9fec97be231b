"""`appliance beat`: runs against a real Redis, keeps its state in the state dir, stops on TERM."""

from __future__ import annotations

from pathlib import Path

from appliance.settings import get_settings
from tests.helpers.processes import ApplianceProcess, wait_until


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
