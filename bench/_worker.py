"""`appliance worker -c 2` for the benchmarks; with --stock, on Celery's own prefork pool.

Builds the same arguments as `appliance worker` (the production profile, limits from
APPLIANCE_* variables) and, for --stock, leaves out the appliance's recycling pool.
"""

from __future__ import annotations

import sys

from appliance.celery_app import load_tasks
from appliance.runtime import WorkerOptions, worker_argv
from appliance.settings import get_settings


def main() -> int:
    argv = worker_argv(get_settings(), WorkerOptions(concurrency=2))
    if "--stock" in sys.argv[1:]:
        at = argv.index("--pool")
        del argv[at : at + 2]
    return int(load_tasks().start(argv=argv) or 0)


if __name__ == "__main__":
    sys.exit(main())
