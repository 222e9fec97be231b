"""`appliance config show|check`."""

from __future__ import annotations

import importlib

import click

from appliance.cli.context import CliContext, echo_json, json_option, pass_cli
from appliance.errors import ConfigError


@click.group("config")
def config() -> None:
    """Show or check the effective settings."""


@config.command("show")
@json_option
@pass_cli
def show(cli: CliContext, as_json: bool) -> None:
    """Print the effective settings (passwords masked)."""
    from appliance.config.settings import env_var

    data = cli.settings.public_dict()
    if as_json:
        echo_json(data)
        return
    for key, value in data.items():
        if value is None:
            value = ""
        elif isinstance(value, bool):
            value = str(value).lower()
        elif isinstance(value, list):
            value = ",".join(value)
        elif isinstance(value, dict):
            value = ";".join(
                f"{k}={','.join(v) if isinstance(v, list) else v}" for k, v in value.items()
            )
        click.echo(f"{env_var(key)}={value}")


@config.command("check")
@pass_cli
def check(cli: CliContext) -> None:
    """Validate the settings and import the task modules; exit 0, or 78 with the reason."""
    settings = cli.settings
    for module in settings.task_modules:
        try:
            importlib.import_module(module)
        except Exception as exc:
            raise ConfigError(
                f"APPLIANCE_TASK_MODULES: module {module!r} does not import "
                f"({type(exc).__name__}: {exc}); fix: install it or correct the name"
            ) from None
    click.echo("config OK")


COMMANDS = [config]
