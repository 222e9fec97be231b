"""Publish a batch of tasks from a separate producer process (application code's view)."""

from __future__ import annotations

import json
import subprocess
import sys

_PRODUCER = """
import json, sys
import appliance
from tests.integration import probe_tasks
count, seconds = int(sys.argv[1]), float(sys.argv[2])
ids = [appliance.submit(probe_tasks.tally.name, args=[seconds]) for _ in range(count)]
print(json.dumps(ids))
"""


def publish_batch(env: dict[str, str], count: int, seconds: float = 0.02) -> list[str]:
    """Submit *count* `probe.tally` tasks through the Python API; return their ids."""
    result = subprocess.run(
        [sys.executable, "-c", _PRODUCER, str(count), str(seconds)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    ids: list[str] = json.loads(result.stdout.strip().splitlines()[-1])
    return ids
