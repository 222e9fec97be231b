"""The appliance's exceptions: each expected failure maps to one exit code."""

from __future__ import annotations

from appliance.core import exitcodes


class ApplianceError(Exception):
    """Raised for an expected failure; the CLI prints its message as one line."""

    exit_code = exitcodes.TASK_FAILED


class ConfigError(ApplianceError):
    """Raised when a setting is invalid; the message names the variable and the fix."""

    exit_code = exitcodes.CONFIG


class UnknownTaskError(ApplianceError):
    """Raised when a task name is not registered with the app."""

    exit_code = exitcodes.UNKNOWN_TASK


class UnknownQueueError(ApplianceError):
    """Raised when a submit names a queue that is not configured."""

    exit_code = exitcodes.USAGE


class BrokerUnavailableError(ApplianceError):
    """Raised when Redis cannot be reached or refuses a publish."""

    exit_code = exitcodes.BROKER_UNAVAILABLE


class DatabaseUnavailableError(ApplianceError):
    """Raised when the task-record database cannot be reached by a command that needs it."""

    exit_code = exitcodes.DATABASE_UNAVAILABLE


class RecordNotFoundError(ApplianceError):
    """Raised when no task record has the given id."""

    exit_code = exitcodes.NOT_FOUND


class MissingProgramError(ApplianceError):
    """Raised when a program the command needs (redis-server, supervisord) is missing."""

    exit_code = exitcodes.MISSING_PROGRAM


class TaskFailedError(ApplianceError):
    """Raised by a waiting submit when the task ended FAILURE or REVOKED."""

    exit_code = exitcodes.TASK_FAILED


class WaitTimeoutError(ApplianceError):
    """Raised by a waiting submit when the task did not finish in time."""

    exit_code = exitcodes.TIMEOUT


class SubmitOptionError(ApplianceError):
    """Raised when submit options cannot work as asked: an ETA or a time limit beyond the
    visibility timeout (Redis would deliver the task again and again), or a soft time
    limit above the hard one. Nothing is queued."""

    exit_code = exitcodes.USAGE


class NotConfirmedError(ApplianceError):
    """Raised by a destructive command that may not ask (no terminal) and got no --yes, or
    whose question was answered no. Nothing is changed."""

    exit_code = exitcodes.NOT_CONFIRMED


class InterruptedByUser(ApplianceError):
    """Raised on Ctrl-C where the command has something to say about what goes on."""

    exit_code = exitcodes.INTERRUPTED
