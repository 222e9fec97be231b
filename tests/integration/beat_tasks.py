"""Imported by `appliance beat` in tests (APPLIANCE_TASK_MODULES): one entry every second.

No worker runs in those tests, so every message beat sends stays in the queue's Redis
list, where the test counts them.
"""

from __future__ import annotations

from appliance.celery_app import app

EVERY_SECOND = "test-every-second"
INTERVAL = 1.0

app.add_periodic_task(INTERVAL, app.signature("demo.noop"), name=EVERY_SECOND)
