"""`appliance deadletter list|show|requeue|drop`: messages the workers could not run."""

from __future__ import annotations

import time
from typing import Any

import click

from appliance.cli.context import (
    CliContext,
    confirm_destructive,
    echo_json,
    json_option,
    pass_cli,
)
from appliance.errors import ApplianceError, RecordNotFoundError


def _client(cli: CliContext) -> Any:
    from appliance.broker.admin import client

    return client(cli.settings)


def _find(cli: CliContext, letter_id: str) -> Any:
    import redis

    from appliance.broker import deadletter
    from appliance.broker.admin import unavailable

    try:
        letter = deadletter.get(_client(cli), letter_id)
    except redis.RedisError as exc:
        raise unavailable(cli.settings, exc) from None
    if letter is None:
        raise RecordNotFoundError(
            f"no dead letter with id {letter_id}; fix: check the id (`appliance deadletter list`)"
        )
    return letter


@click.group("deadletter")
def deadletter_group() -> None:
    """Messages the workers could not run (unknown task, undecodable or garbage body)."""


@deadletter_group.command("list")
@click.option("--limit", type=click.IntRange(1, 100_000), default=100, show_default=True)
@json_option
@pass_cli
def list_(cli: CliContext, limit: int, as_json: bool) -> None:
    """List dead letters, newest first."""
    import redis

    from appliance.broker import deadletter
    from appliance.broker.admin import unavailable

    try:
        letters = deadletter.list_letters(_client(cli), limit)
    except redis.RedisError as exc:
        raise unavailable(cli.settings, exc) from None
    if as_json:
        echo_json([d.to_dict(with_raw=False) for d in letters])
        return
    if not letters:
        click.echo("no dead letters")
        return
    from tabulate import tabulate

    rows = [
        [
            d.id,
            d.task_name or "",
            d.queue or "",
            time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(d.stored_at)),
            d.reason[:70],
        ]
        for d in letters
    ]
    click.echo(tabulate(rows, headers=["id", "task", "queue", "stored (UTC)", "reason"]))


@deadletter_group.command("show")
@click.argument("letter_id")
@json_option
@pass_cli
def show(cli: CliContext, letter_id: str, as_json: bool) -> None:
    """Show one dead letter with its raw message."""
    data = _find(cli, letter_id).to_dict()
    if as_json:
        echo_json(data)
        return
    for key, value in data.items():
        if key == "stored_at" and isinstance(value, (int, float)):
            value = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(value))
        if key != "raw_b64" and value not in (None, ""):
            click.echo(f"{key + ':':<14}{value}")


@deadletter_group.command("requeue")
@click.argument("letter_id")
@click.option("--queue", help="Queue to put it on (default: where it came from).")
@pass_cli
def requeue(cli: CliContext, letter_id: str, queue: str | None) -> None:
    """Put a dead letter back on its queue, e.g. after deploying its task module."""
    from appliance.broker import deadletter

    letter = _find(cli, letter_id)
    if not letter.requeueable:
        raise ApplianceError(
            f"dead letter {letter_id} is not a well-formed task message and would only come back "
            "here; fix: inspect it with `appliance deadletter show`, then drop it"
        )
    if queue is not None and queue not in cli.settings.queues:
        raise click.BadParameter(f"unknown queue {queue!r}")
    target = deadletter.requeue(_client(cli), letter, queue)
    click.echo(f"requeued {letter_id} on queue {target}")


@deadletter_group.command("drop")
@click.argument("letter_id")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@pass_cli
def drop(cli: CliContext, letter_id: str, yes: bool) -> None:
    """Delete a dead letter for good."""
    from appliance.broker import deadletter

    _find(cli, letter_id)
    confirm_destructive("appliance deadletter drop", f"dead letter {letter_id} for good", yes)
    deadletter.drop(_client(cli), letter_id)
    click.echo(f"dropped {letter_id}")


COMMANDS = [deadletter_group]
