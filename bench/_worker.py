"""`appliance worker -c 2` for the benchmarks: --consumers (the default topology, as
`appliance worker` runs it), --prefork (the appliance's prefork pool), --stock (Celery's
own prefork pool, the same arguments less the appliance's recycling pool). Limits come
from APPLIANCE_* variables.
"""

from __future__ import annotations

import sys

from appliance.celery_app import load_tasks
from appliance.config.settings import get_settings
from appliance.worker.launch import WorkerOptions, start_celery, worker_argv


def main() -> int:
    if "--consumers" in sys.argv[1:]:
        from appliance.worker.launch import run_worker

        return run_worker(get_settings(), WorkerOptions(concurrency=2, topology="consumers"))
    argv = worker_argv(get_settings(), WorkerOptions(concurrency=2))
    if "--stock" in sys.argv[1:]:
        at = argv.index("--pool")
        del argv[at : at + 2]
    return start_celery(load_tasks(), argv)


if __name__ == "__main__":
    sys.exit(main())
