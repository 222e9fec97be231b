"""Settings from `APPLIANCE_*` variables and the env file, and the Celery profile they build."""
