"""`appliance worker -c 2` for the benchmarks; with --stock, on Celery's own prefork pool.

Builds the same arguments as `appliance worker` (the production profile, limits from
APPLIANCE_* variables) and, for --stock, leaves out the appliance's recycling pool.
"""

from __future__ import annotations

import sys

from appliance.celery_app import load_tasks
from appliance.runtime import WorkerOptions, start_celery, worker_argv
from appliance.settings import get_settings


def main() -> int:
    argv = worker_argv(get_settings(), WorkerOptions(concurrency=2))
    if "--stock" in sys.argv[1:]:
        at = argv.index("--pool")
        del argv[at : at + 2]
    return start_celery(load_tasks(), argv)


if __name__ == "__main__":
    sys.exit(main())
