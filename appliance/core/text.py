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
    except ValueError:  # a bad port
        return "****"
    return urlunsplit(parts._replace(netloc=netloc))
