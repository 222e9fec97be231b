"""The prefork topology: Celery's AsynPool with cheap child recycling."""
