"""Where settings come from: the env file, the state dir, the embedded broker.

Light on imports (no pydantic): the health check reads its few values through this
module too, so both paths agree on the sources and their order.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from appliance.core import constants as C
from appliance.errors import ConfigError

logger = logging.getLogger("appliance.config")


class _NoDotenvParseWarning(logging.Filter):
    """python-dotenv warns about a line it cannot parse without naming the file; the
    appliance says it once, with the file (see env_file_lines_ignored)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "could not parse statement" not in record.getMessage()


logging.getLogger("dotenv.main").addFilter(_NoDotenvParseWarning())


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
        return _checked(explicit)
    default = Path(C.SYSTEM_ENV_FILE)
    return _checked(str(default)) if default.is_file() and os.access(default, os.R_OK) else None


def _checked(path: str) -> str:
    """*path*, once it reads as UTF-8 text (a warning per line that is not KEY=VALUE)."""
    try:
        stat = os.stat(path)
    except OSError:
        return path  # gone meanwhile: the reader says so
    version = (path, stat.st_mtime_ns, stat.st_size)
    lines = _file_problems(*version)
    if lines and version not in _warned and _warn_ignored_lines:
        _warned.add(version)
        for line in lines:
            logger.warning(
                "env file %s: line %d is not KEY=VALUE and is ignored; fix: correct or remove it",
                path,
                line,
            )
    return path


_warned: set[tuple[str, int, int]] = set()
_warn_ignored_lines = True


@contextlib.contextmanager
def ignored_lines_quiet() -> Iterator[None]:
    """No warning about env file lines that are ignored in this block (`config check`
    reports them as errors)."""
    global _warn_ignored_lines
    before, _warn_ignored_lines = _warn_ignored_lines, False
    try:
        yield
    finally:
        _warn_ignored_lines = before


@functools.cache
def _file_problems(path: str, _mtime_ns: int, _size: int) -> tuple[int, ...]:
    """The lines of the env file that python-dotenv cannot parse; ConfigError when it is
    not UTF-8 (once per version of the file: the warnings come once per process)."""
    import io

    try:
        data = Path(path).read_bytes()
    except OSError:
        return ()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ConfigError(
            f"env file {path} is not UTF-8 text (byte 0x{data[exc.start]:02x} on line {line}); "
            "fix: save it as UTF-8, e.g. `iconv -f latin1 -t utf-8`"
        ) from None
    from dotenv.parser import parse_stream

    return tuple(b.original.line for b in parse_stream(io.StringIO(text)) if b.error)


def env_file_lines_ignored() -> tuple[str | None, tuple[int, ...]]:
    """The env file in use and its lines that are not KEY=VALUE (for `config check`)."""
    path = env_file_path()
    if path is None:
        return None, ()
    stat = os.stat(path)
    return path, _file_problems(path, stat.st_mtime_ns, stat.st_size)


def raw_values() -> dict[str, str]:
    """APPLIANCE_*/CELERY_* values: the env file overlaid by the environment (upper-cased keys)."""
    values: dict[str, str] = {}
    path = env_file_path()
    if path:
        from dotenv import dotenv_values

        values.update({k.upper(): v for k, v in dotenv_values(path).items() if v is not None})
    values.update({k.upper(): v for k, v in os.environ.items()})
    return {k: v for k, v in values.items() if k.startswith(("APPLIANCE_", "CELERY_"))}


def setting_origin(*names: str) -> str | None:
    """Where the first of *names* that is set comes from, for messages: ``NAME in the
    environment`` or ``NAME in env file PATH``; None when none is set."""
    environment = {k.upper() for k in os.environ}
    for name in names:
        if name in environment:
            return f"{name} in the environment"
    path = env_file_path()
    if path:
        from dotenv import dotenv_values

        in_file = {k.upper() for k in dotenv_values(path)}
        for name in names:
            if name in in_file:
                return f"{name} in env file {path}"
    return None


def state_dir_of(values: Mapping[str, str]) -> Path:
    """APPLIANCE_STATE_DIR of *values* (raw_values()), else the default state dir."""
    return (
        Path(values["APPLIANCE_STATE_DIR"])
        if values.get("APPLIANCE_STATE_DIR")
        else default_state_dir()
    )


@dataclass(frozen=True)
class BrokerOrigin:
    """Where the broker URL came from, so that a message can point there."""

    #: setting: APPLIANCE_BROKER_URL (or CELERY_BROKER_URL) in the environment or the env
    #: file; embedded: the state file of a running `appliance up`; default: neither.
    kind: Literal["setting", "embedded", "default"]
    #: e.g. "APPLIANCE_BROKER_URL in env file /etc/appliance/appliance.env", or the path of
    #: the state file.
    source: str
    state_dir: Path | None = None

    @property
    def explicit(self) -> bool:
        return self.kind == "setting"


def resolve_broker(values: Mapping[str, str] | None = None) -> tuple[str, BrokerOrigin]:
    """The broker URL as every command resolves it, and where it came from: the setting,
    else the embedded broker of an `appliance up` on the state dir, else the default."""
    values = raw_values() if values is None else values
    names = ("APPLIANCE_BROKER_URL", "CELERY_BROKER_URL")
    explicit = first(values, *names)
    if explicit:
        return explicit, BrokerOrigin("setting", setting_origin(*names) or names[0])
    state_dir = state_dir_of(values)
    embedded = embedded_broker(state_dir)
    if embedded:
        path = state_dir / C.EMBEDDED_DIR / C.EMBEDDED_BROKER_FILE
        return embedded, BrokerOrigin("embedded", str(path), state_dir)
    return C.DEFAULT_BROKER_URL, BrokerOrigin("default", "the default", state_dir)


def url_problem(url: str) -> str | None:
    """What is wrong with the port or database number of a Redis or database URL (a
    ``;``-joined Sentinel list item by item), or None. No network."""
    for item in url.split(";"):
        try:
            parts = urlsplit(item.strip())
            parts.port  # noqa: B018  (raises ValueError for a port that is not a number)
        except ValueError as exc:
            return f"bad port or address ({exc})"
        if parts.scheme in ("redis", "rediss", "sentinel"):
            db = parts.path.strip("/")
            if db and not db.isdigit():
                return f"the database {parts.path!r} is not a number (use /0, /1, ...)"
    return None


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
