"""The appliance's Lua scripts: one file each in ``broker/lua/``, read once.

A line ``-- include: NAME`` stands for the file ``NAME.lua`` (a library of local
functions), so two scripts that store a result by the same rule share one text.
"""

from __future__ import annotations

import functools
import re
from importlib import resources

_INCLUDE = re.compile(r"(?m)^-- include: ([a-z_]+)$")


@functools.cache
def source(name: str) -> str:
    """The text of ``broker/lua/<name>.lua``, its includes expanded."""
    text = resources.files("appliance.broker").joinpath("lua", f"{name}.lua").read_text()
    return _INCLUDE.sub(lambda match: source(match.group(1)), text)
