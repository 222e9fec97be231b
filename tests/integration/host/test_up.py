"""`appliance up`: a private Redis, worker and beat under supervisord; nothing left behind."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from tests.helpers.processes import ApplianceProcess, run_cli, wait_until


def _processes_mentioning(marker: str) -> list[int]:
    """Pids whose command line or environment names *marker* (our state dir)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            blob = (entry / "cmdline").read_bytes() + (entry / "environ").read_bytes()
        except OSError:
            continue
        if marker.encode() in blob:
            found.append(int(entry.name))
    return found


def test_up_runs_a_task_from_a_second_terminal_and_stops_cleanly(tmp_path: Path) -> None:
    state = tmp_path / "state"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("APPLIANCE_", "CELERY_"))}
    env.update(APPLIANCE_STATE_DIR=str(state), APPLIANCE_ENV_FILE=os.environ["APPLIANCE_ENV_FILE"])
    up = ApplianceProcess(["up"], env, tmp_path / "up.log")
    try:
        wait_until(lambda: (state / "embedded" / "broker.url").exists(), 60, "the broker URL file")
        # A second terminal: same state dir, no broker URL of its own.
        submitted = run_cli(
            env, "submit", "demo.add", "--args", "[2, 3]", "--wait", "60", timeout=90
        )
        assert submitted.returncode == 0, submitted.stderr + up.output()
        assert submitted.stdout.strip() == "5"
        password = (
            (state / "embedded" / "redis.conf").read_text().split("requirepass ")[1].split()[0]
        )
        assert password not in up.output()
        assert _processes_mentioning(str(state))
    finally:
        up.proc.send_signal(signal.SIGTERM)
        code = up.proc.wait(120)
        up.kill()
    assert code == 0, up.output()
    assert not (state / "embedded" / "broker.url").exists()
    assert _processes_mentioning(str(state)) == []
