"""`appliance flower`: Flower, the Celery web monitor, on this appliance's settings.

Flower is optional (the `flower` extra; `scripts/install.sh --with-flower` installs it
from the lock `requirements/runtime-flower.txt`). It runs in this process as Celery's
`flower` command on the appliance's app, with:

- HTTP basic auth always: the credentials are FLOWER_BASIC_AUTH (``USER:PASSWORD``,
  comma-separated for several) or an OAuth FLOWER_AUTH, from the environment or, like
  every setting, the env file (install.sh generates FLOWER_BASIC_AUTH there). They reach
  Flower through the environment only, never the command line (`ps`). Without them
  Flower 2.x would serve its UI, task arguments and results included, to anyone who can
  reach the port, and answer 401 to every /api call.
- Flower's periodic `enable_events` broadcast off: it would switch task events on for
  every worker every few seconds, behind APPLIANCE_TASK_EVENTS' back. Flower shows what
  the workers send: worker events always, task events when they are on.

Other Flower options are FLOWER_* variables, read from the environment and the env file
the same way (docs/operations.md, Monitoring with Flower).
"""

from __future__ import annotations

import importlib.util
import os
import secrets
from pathlib import Path

from appliance.config.envsource import env_file_path
from appliance.errors import ConfigError, MissingProgramError

DEFAULT_ADDRESS = "127.0.0.1"
DEFAULT_PORT = 5555
BASIC_AUTH = "FLOWER_BASIC_AUTH"
OAUTH = "FLOWER_AUTH"
PREFIX = "FLOWER_"
BASIC_AUTH_USER = "appliance"


def installed() -> bool:
    """Flower can be imported here."""
    return importlib.util.find_spec("flower") is not None


def require_flower() -> None:
    """Raise MissingProgramError (exit 72) with the fix when Flower is not installed."""
    if not installed():
        raise MissingProgramError(
            "flower is not installed in this Python environment; fix: re-run "
            "scripts/install.sh with --with-flower (a development venv: "
            "pip install --require-hashes -r requirements/dev.txt)"
        )


def flower_values() -> dict[str, str]:
    """FLOWER_* variables: the env file's, overlaid by the environment's."""
    values: dict[str, str] = {}
    path = env_file_path()
    if path:
        from dotenv import dotenv_values

        values.update({k: v for k, v in dotenv_values(path).items() if k.startswith(PREFIX) and v})
    values.update({k: v for k, v in os.environ.items() if k.startswith(PREFIX)})
    return values


def check_credentials(values: dict[str, str]) -> None:
    """Refuse (ConfigError, exit 78) to serve Flower without authentication."""
    if values.get(OAUTH):
        return
    basic = values.get(BASIC_AUTH, "").strip()
    if not basic:
        raise ConfigError(
            f"{BASIC_AUTH} is not set, and Flower would serve tasks and the API without "
            f"authentication; fix: add {BASIC_AUTH}=USER:PASSWORD to the env file "
            "(scripts/install.sh --with-flower generates one)"
        )
    for credential in basic.split(","):
        user, sep, password = credential.partition(":")
        if not (sep and user.strip() and password):
            raise ConfigError(
                f"invalid {BASIC_AUTH}: an entry is not USER:PASSWORD; fix: use "
                f"{BASIC_AUTH}=USER:PASSWORD (several separated by commas)"
            )


def new_basic_auth() -> str:
    """Fresh credentials: the user ``appliance`` and a random URL-safe password."""
    return f"{BASIC_AUTH_USER}:{secrets.token_urlsafe(24)}"


def flower_argv(address: str = DEFAULT_ADDRESS, port: int = DEFAULT_PORT) -> list[str]:
    """Arguments of Celery's `flower` command (no secret among them)."""
    return [
        "flower",
        f"--address={address}",
        f"--port={port}",
        # Flower's enable_events timer broadcasts enable_events every 5 s: task events
        # would be on whenever Flower runs, whatever APPLIANCE_TASK_EVENTS says.
        "--enable_events=False",
    ]


def write_credentials(path: Path, credentials: str) -> None:
    """Write *credentials* to *path*, readable by this user only."""
    path.touch(mode=0o600)
    path.chmod(0o600)
    path.write_text(credentials + "\n")


def run_flower(address: str = DEFAULT_ADDRESS, port: int = DEFAULT_PORT) -> int:
    """Run Flower in the foreground until it stops; return its exit code."""
    require_flower()
    values = flower_values()
    check_credentials(values)
    os.environ.update(values)  # Flower reads its FLOWER_* options from the environment
    from appliance.celery_app import load_tasks
    from appliance.worker.launch import start_celery

    return start_celery(load_tasks(), flower_argv(address, port))
