"""Reaching the broker's Redis: the one line for a Redis that is down or refuses the
login, pointing where its URL came from; and the CLI's note of which broker it uses when
none is configured.

Stdlib only: the health path imports it.
"""

from __future__ import annotations

from collections.abc import Callable

from appliance.config.envsource import BrokerOrigin, resolve_broker
from appliance.core.text import mask_url
from appliance.errors import ConfigError

# redis-py turns WRONGPASS and NOAUTH into AuthenticationError and drops the prefix; the
# RESP client of the health path keeps Redis's own text.
_AUTH_MARKERS = (
    "wrongpass",
    "noauth",
    "invalid username-password",
    "invalid password",
    "authentication required",
    "without any password configured",
    "authenticationerror",
)


def is_auth_error(error: BaseException | str) -> bool:
    """Whether *error* is Redis refusing the login (wrong or missing password or user)."""
    text = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
    text = text.lower()
    return any(marker in text for marker in _AUTH_MARKERS)


def origin_of(url: str) -> BrokerOrigin | None:
    """Where *url* came from when it is the broker every command resolves, else None."""
    try:
        resolved, origin = resolve_broker()
    except ConfigError:
        return None
    return origin if resolved == url else None


def problem(url: str, reason: str, origin: BrokerOrigin | None = None) -> str:
    """One line: Redis at *url* is unreachable or refused the login (*reason*), and the fix."""
    where = mask_url(url)
    if is_auth_error(reason):
        return f"Redis at {where} refused the login ({reason}); fix: {auth_fix(origin)}"
    return f"Redis unreachable at {where} ({reason}); fix: {start_fix(origin)}"


def start_fix(origin: BrokerOrigin | None) -> str:
    """What to do about a broker that does not answer, by where its URL came from."""
    if origin is None:
        return "start redis-server or correct APPLIANCE_BROKER_URL"
    if origin.kind == "embedded":
        return (
            f"this URL comes from `appliance up`'s state file {origin.source}: start "
            "`appliance up` again (remove that file if its `appliance up` is gone for good), "
            "or set APPLIANCE_BROKER_URL"
        )
    if origin.kind == "default":
        return (
            "no APPLIANCE_BROKER_URL is set, so this is the default: start redis-server "
            "there, run `appliance up`, or set APPLIANCE_BROKER_URL (in the env file)"
        )
    return f"start redis-server or correct {origin.source}"


def auth_fix(origin: BrokerOrigin | None) -> str:
    """What to do about a broker that refuses the login, by where its URL came from."""
    if origin is None:
        return "correct the password (and user) in APPLIANCE_BROKER_URL"
    if origin.kind == "embedded":
        return (
            f"this URL comes from `appliance up`'s state file {origin.source}, which no longer "
            "matches that Redis: restart `appliance up`, or set APPLIANCE_BROKER_URL"
        )
    if origin.kind == "default":
        return (
            "no APPLIANCE_BROKER_URL is set and the default URL has no password: set "
            "APPLIANCE_BROKER_URL=redis://:PASSWORD@HOST:6379/0 (in the env file)"
        )
    return f"correct the password (and user) in {origin.source}"


def using_line(url: str, origin: BrokerOrigin) -> str | None:
    """The CLI's note of the broker it uses, when none is configured; None when one is."""
    if origin.kind == "embedded":
        return (
            f"using the embedded broker of `appliance up` at {mask_url(url)} "
            f"(state dir {origin.state_dir})"
        )
    if origin.kind == "default":
        return f"using the default broker {mask_url(url)} (no APPLIANCE_BROKER_URL set)"
    return None


# The CLI arms a note for the first connection to the broker's Redis of a command; library
# code (workers, application code) never has one armed and stays silent.
_note: Callable[[], None] | None = None


def arm(note: Callable[[], None]) -> None:
    global _note
    _note = note


def disarm() -> None:
    global _note
    _note = None


def reaching() -> None:
    """Called just before a connection to the broker: the armed note, once."""
    global _note
    note, _note = _note, None
    if note is not None:
        note()
