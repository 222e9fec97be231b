"""Exit codes of every `appliance` command, in one place (listed in the README).

They follow sysexits.h where one fits, as Celery does (EX_UNAVAILABLE = 69).
`appliance health` uses the Nagios codes 0-3 instead.
"""

from __future__ import annotations

OK = 0
TASK_FAILED = 1  # submit --wait: the task ended FAILURE or REVOKED
USAGE = 2  # bad command-line argument or bad --args/--kwargs JSON (click's own code)
NOT_CONFIRMED = 64  # a destructive command without a terminal and without --yes (EX_USAGE)
UNKNOWN_TASK = 65  # no task of that name is registered (EX_DATAERR)
NOT_FOUND = 66  # no such task record (EX_NOINPUT)
BROKER_UNAVAILABLE = 69  # Redis unreachable or refusing writes (EX_UNAVAILABLE)
SHUTDOWN_HUNG = 70  # worker: its shutdown hung after the pool stopped; forced exit (EX_SOFTWARE)
INTERNAL = 70  # any command: an unexpected error, a bug or an environment problem (EX_SOFTWARE)
MISSING_PROGRAM = 72  # a program the command needs is not installed (EX_OSFILE)
DATABASE_UNAVAILABLE = 74  # the task-record database is unreachable (EX_IOERR)
TIMEOUT = 75  # submit --wait: the task did not finish in time, and goes on (EX_TEMPFAIL)
CONFIG = 78  # invalid configuration (EX_CONFIG); systemd units do not restart on it
INTERRUPTED = 130  # Ctrl-C (128 + SIGINT)
NAGIOS_UNKNOWN = 3  # `appliance health` / `redis check`: the checker itself failed
