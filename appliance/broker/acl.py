"""Redis ACL users: recognise a refused permission and name the rule that grants it.

The appliance runs as a Redis ACL user with ``~* &* +@all -@dangerous`` (see
docs/redis.md, ACL user). Commands in @dangerous that it uses (INFO for the health check and the
worker's eviction check, CONFIG for `redis tune`) then fail with NOPERM; callers turn
that into one line naming the rule to add. Stdlib only: the health path imports it.
"""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

# redis-py's NoPermissionError drops the "NOPERM" prefix; the RESP client keeps it.
_MARKERS = ("NOPERM", "no permissions to")


def is_noperm(exc: BaseException) -> bool:
    """Whether *exc* is Redis refusing a command, key or channel to the ACL user."""
    text = str(exc)
    return any(marker in text for marker in _MARKERS)


def acl_user(url: str) -> str:
    """The ACL user a Redis URL logs in as (``default`` when it names none)."""
    try:
        user = urlsplit(url).username
    except ValueError:
        return "default"
    return unquote(user) if user else "default"


def grant(url: str, rule: str) -> str:
    """The command that adds *rule* to the URL's ACL user, e.g. ``ACL SETUSER appliance +info``."""
    return f"ACL SETUSER {acl_user(url)} {rule}"
