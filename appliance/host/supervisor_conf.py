"""Rendering of deploy/supervisor/appliance.conf: one worker program per queue group, beat,
and Flower when asked for."""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path
from string import Template

from appliance.config.settings import Settings

_GROUP_PLACEHOLDER = "${group}"
_FLOWER_PROGRAM = "[program:appliance-flower]"


def deploy_dir() -> Path:
    """The deploy/ files: inside the wheel (appliance/_deploy) or the source tree."""
    packaged = Path(str(resources.files("appliance"))) / "_deploy"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[2] / "deploy"


def _sections(text: str) -> tuple[str, list[str]]:
    """Split an INI text into its preamble and its sections (each from its `[` line)."""
    parts = re.split(r"(?m)^(?=\[)", text)
    return parts[0], parts[1:]


def render(
    settings: Settings,
    *,
    bin_command: str,
    user: str,
    log_dir: Path,
    flower_port: int | None = None,
) -> str:
    """The supervisord programs of this appliance, ready for supervisord to include; with
    *flower_port*, Flower (`appliance flower`) on 127.0.0.1 at that port too."""
    template = (deploy_dir() / "supervisor" / "appliance.conf").read_text()
    preamble, sections = _sections(template)
    groups = list(settings.worker_groups)
    programs = [f"appliance-worker-{g}" for g in groups] + ["appliance-beat"]
    if flower_port is not None:
        programs.append("appliance-flower")
    common = {
        "bin": bin_command,
        "user": user,
        "state_dir": str(settings.state_dir),
        "log_dir": str(log_dir),
        "stopwaitsecs": str(settings.stop_timeout),
        "programs": ",".join(programs),
        "flower_port": str(flower_port),
    }
    out = [preamble]
    for section in sections:
        header = section.splitlines()[0]
        if header.strip() == _FLOWER_PROGRAM and flower_port is None:
            continue
        for group in groups if _GROUP_PLACEHOLDER in header else [None]:
            values = common | ({"group": group} if group else {})
            out.append(Template(section).substitute(values))
    return "".join(out)
