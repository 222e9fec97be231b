"""Rendering of deploy/supervisor/appliance.conf: one worker program per queue group."""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path
from string import Template

from appliance.config.settings import Settings

_GROUP_PLACEHOLDER = "${group}"


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


def render(settings: Settings, *, bin_command: str, user: str, log_dir: Path) -> str:
    """The supervisord programs of this appliance, ready for supervisord to include."""
    template = (deploy_dir() / "supervisor" / "appliance.conf").read_text()
    preamble, sections = _sections(template)
    groups = list(settings.worker_groups)
    programs = [f"appliance-worker-{g}" for g in groups] + ["appliance-beat"]
    common = {
        "bin": bin_command,
        "user": user,
        "state_dir": str(settings.state_dir),
        "log_dir": str(log_dir),
        "stopwaitsecs": str(settings.stop_timeout),
        "programs": ",".join(programs),
    }
    out = [preamble]
    for section in sections:
        header = section.splitlines()[0]
        for group in groups if _GROUP_PLACEHOLDER in header else [None]:
            values = common | ({"group": group} if group else {})
            out.append(Template(section).substitute(values))
    return "".join(out)
