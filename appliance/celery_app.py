"""The appliance's Celery app: ``appliance.celery_app:app``.

The configuration is a promise evaluated on first use, so importing this module
reads no settings and opens no connection.
"""

from __future__ import annotations

from typing import Any

from celery import Celery

from appliance.broker import result_backend
from appliance.broker import transport as broker_transport
from appliance.config.profile import celery_config
from appliance.config.settings import get_settings
from appliance.records import signals as record_signals


def _config() -> dict[str, Any]:
    return celery_config(get_settings())


broker_transport.install()
result_backend.install()
app = Celery("appliance", task_cls="appliance.tasks.base:ApplianceTask")
app.add_defaults(_config)
record_signals.connect()


def load_tasks() -> Celery:
    """Import the built-in and configured task modules; return the app."""
    app.loader.import_default_modules()
    return app
