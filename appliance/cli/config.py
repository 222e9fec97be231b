"""`appliance config show|check`."""

from __future__ import annotations

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
    """Validate everything that needs no network: the env file, URLs, the state dir and the
    SQLite file (paths, permissions), the database driver, TLS files, the task modules.

    Exit 0, or 78 with one line per problem. Reaching Redis and the database is
    `appliance health --db`.
    """
    from appliance.config.envsource import ignored_lines_quiet
    from appliance.config.offline import problems

    with ignored_lines_quiet():  # reported below, as errors
        found = problems(cli.settings)
    if not found:
        click.echo("config OK")
        return
    for line in found[:-1]:
        click.echo(f"appliance: error: {line}", err=True)
    raise ConfigError(found[-1])


COMMANDS = [config]
