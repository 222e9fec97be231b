"""`appliance health`: cheap, precise checks that read Redis directly.

Nothing here imports the Celery app, task modules, pydantic or SQLAlchemy on the
default path, so a probe answers in tens of milliseconds.
"""
