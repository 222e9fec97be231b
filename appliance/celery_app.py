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
    """Import the built-in and configured task modules; return the app.

    A configured module that does not import is a ConfigError (exit 78) naming it, as in
    `appliance config check`.
    """
    try:
        app.loader.import_default_modules()
    except Exception as exc:
        from appliance.errors import ApplianceError

        if isinstance(exc, ApplianceError):
            raise
        failed = _failed_module(exc)
        if failed is None:
            raise
        from appliance.config.offline import task_module_problem
        from appliance.errors import ConfigError

        raise ConfigError(task_module_problem(failed, exc)) from None
    return app


def _failed_module(exc: Exception) -> str | None:
    """The configured task module whose import raised *exc*, if one did."""
    import importlib
    import sys

    for module in get_settings().task_modules:
        if module in sys.modules:
            continue
        try:
            importlib.import_module(module)
        except Exception:
            return module
    missing = getattr(exc, "name", None)
    return missing if missing in get_settings().task_modules else None
