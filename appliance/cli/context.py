"""The CLI's context object: settings and connections made on first use only."""

from __future__ import annotations

import functools
import json
import sys
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from appliance.config.settings import Settings


class CliContext:
    """Lazily loaded settings, so `appliance --help` touches nothing."""

    @functools.cached_property
    def settings(self) -> Settings:
        from appliance.config.settings import get_settings

        return get_settings()

    @property
    def records_url(self) -> str:
        return self.settings.effective_database_url


pass_cli = click.make_pass_decorator(CliContext)


def echo_json(data: Any) -> None:
    """Print *data* as indented JSON on stdout."""
    click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))


json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")


def confirm_destructive(command: str, what: str, yes: bool) -> None:
    """Ask before *command* deletes *what* (e.g. "3 task records"); without a terminal
    to ask on, --yes is the only way (exit 64, nothing deleted)."""
    from appliance.errors import NotConfirmedError

    if yes:
        return
    if not sys.stdin.isatty():
        raise NotConfirmedError(
            f"{command} deletes {what}; pass --yes to confirm without a terminal "
            "(nothing was deleted)"
        )
    if not click.confirm(f"Delete {what}?", default=False):
        raise NotConfirmedError("not confirmed; nothing was deleted")
