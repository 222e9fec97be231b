"""`appliance db upgrade|status`."""

from __future__ import annotations

import click

from appliance.cli.context import CliContext, echo_json, json_option, pass_cli


@click.group("db")
def db() -> None:
    """Manage the task-record database schema."""


@db.command("upgrade")
@pass_cli
def upgrade(cli: CliContext) -> None:
    """Apply schema migrations up to this version's head (safe to repeat)."""
    from appliance.records import schema

    before = schema.upgrade(cli.records_url)
    if before.is_current:
        click.echo(f"database already at revision {before.head}")
    else:
        click.echo(f"database upgraded from {before.current or 'empty'} to {before.head}")


@db.command("status")
@json_option
@pass_cli
def status(cli: CliContext, as_json: bool) -> None:
    """Show the schema revision of the database and the one this version needs."""
    from appliance.records import schema

    state = schema.schema_state(cli.records_url)
    data = {"current": state.current, "head": state.head, "is_current": state.is_current}
    if as_json:
        echo_json(data)
    else:
        verdict = "current" if state.is_current else "needs `appliance db upgrade`"
        click.echo(f"revision {state.current or 'none'} (head {state.head}): {verdict}")


COMMANDS = [db]
