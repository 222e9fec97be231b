"""Text for operators: an error in one line, a URL without its password.

Stdlib only: the health check renders its lines through these too.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

# ":password@" in something that does not parse as a URL with a password.
_LOOSE_PASSWORD = re.compile(r":[^:/@]*@")


def first_line(error: object) -> str:
    """The first line of *error*'s text, or its type's name when it has no text."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def one_line(error: BaseException) -> str:
    """``Type: first line`` of an exception, for logs and stored error fields."""
    text = str(error).strip()
    name = type(error).__name__
    return f"{name}: {text.splitlines()[0]}" if text else name


def mask_url(url: str) -> str:
    """Return *url* with any password replaced by ``****``."""
    if ";" in url:  # sentinel://...;sentinel://...: each item may carry the password
        return ";".join(mask_url(item) for item in url.split(";"))
    try:
        parts = urlsplit(url)
    except ValueError:
        return "****"
    try:
        if parts.password is None:
            # No URL password, but maybe a mistyped URL around one ("redis:/:pw@host",
            # "user:pw@host" without a scheme): mask what looks like ":password@".
            return _LOOSE_PASSWORD.sub(":****@", url)
        user = parts.username or ""
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        netloc = f"{user}:****@{host}" + (f":{parts.port}" if parts.port else "")
    except ValueError:  # a bad port: mask by hand, so the message still shows the port
        return _mask_by_hand(url)
    return urlunsplit(parts._replace(netloc=netloc))


def _mask_by_hand(url: str) -> str:
    """``scheme://user:****@rest`` for a URL urllib cannot take apart."""
    scheme, sep, rest = url.partition("://")
    auth, at, host = rest.rpartition("@")
    if not sep or not at:
        return _LOOSE_PASSWORD.sub(":****@", url) if sep else "****"
    user, colon, _password = auth.partition(":")
    return f"{scheme}://{user}:****@{host}" if colon else url


# "scheme://user:password@" anywhere in a text (an exception's message, say).
_URL_PASSWORD = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.\-]*://[^\s:/@]*:)[^\s@]*@")


def mask_secrets(text: str) -> str:
    """*text* with the password of every URL in it replaced by ``****``."""
    return _URL_PASSWORD.sub(r"\1****@", text)


def human_bytes(count: int) -> str:
    """``5.9GiB``, ``256MiB``, ``512B``: a byte count for people (exact bytes go in JSON)."""
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            text = f"{value:.1f}".removesuffix(".0") if unit != "B" else f"{count}"
            return f"{text}{unit}"
        value /= 1024
    raise AssertionError("unreachable")
