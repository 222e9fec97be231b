"""Where settings come from: the env file, the state dir, the embedded broker.

Light on imports (no pydantic): the health check reads its few values through this
module too, so both paths agree on the sources and their order.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from appliance.core import constants as C
from appliance.errors import ConfigError


def env_file_path() -> str | None:
    """APPLIANCE_ENV_FILE (must exist), else the system env file when readable, else None."""
    explicit = os.environ.get("APPLIANCE_ENV_FILE")
    if explicit:
        if not Path(explicit).is_file():
            raise ConfigError(
                f"APPLIANCE_ENV_FILE={explicit} does not exist or is not a file; "
                "fix: point it at an env file or unset it"
            )
        if not os.access(explicit, os.R_OK):
            raise ConfigError(
                f"APPLIANCE_ENV_FILE={explicit} is not readable by this user; "
                "fix: run as a member of the appliance group or fix its permissions"
            )
        return explicit
    default = Path(C.SYSTEM_ENV_FILE)
    return str(default) if default.is_file() and os.access(default, os.R_OK) else None


def raw_values() -> dict[str, str]:
    """APPLIANCE_*/CELERY_* values: the env file overlaid by the environment (upper-cased keys)."""
    values: dict[str, str] = {}
    path = env_file_path()
    if path:
        from dotenv import dotenv_values

        values.update({k.upper(): v for k, v in dotenv_values(path).items() if v is not None})
    values.update({k.upper(): v for k, v in os.environ.items()})
    return {k: v for k, v in values.items() if k.startswith(("APPLIANCE_", "CELERY_"))}


def default_state_dir() -> Path:
    """systemd's $STATE_DIRECTORY, the system dir when writable, else the XDG state home."""
    systemd_dir = os.environ.get("STATE_DIRECTORY")
    if systemd_dir:
        return Path(systemd_dir.split(":")[0])
    system = Path(C.SYSTEM_STATE_DIR)
    if system.is_dir() and os.access(system, os.W_OK):
        return system
    xdg = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(xdg) / "appliance"


def embedded_broker(state_dir: Path) -> str | None:
    """The broker URL of an `appliance up` running on *state_dir*, if any."""
    path = state_dir / C.EMBEDDED_DIR / C.EMBEDDED_BROKER_FILE
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


def split_list(value: Any) -> Any:
    """``a, b,c`` -> ["a", "b", "c"]; other values pass through."""
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


def split_mapping(value: Any) -> Any:
    """``KEY=VALUE;KEY=VALUE`` -> dict (the env-var form of a small mapping)."""
    if not isinstance(value, str):
        return value
    mapping: dict[str, str] = {}
    for entry in value.split(";"):
        if not entry.strip():
            continue
        key, sep, val = entry.partition("=")
        if not sep or not key.strip() or not val.strip():
            raise ValueError(f"entry {entry.strip()!r} is not KEY=VALUE")
        mapping[key.strip()] = val.strip()
    return mapping


def first(values: Mapping[str, str], *names: str) -> str | None:
    """The value of the first of *names* that is set."""
    for name in names:
        if name in values:
            return values[name]
    return None
